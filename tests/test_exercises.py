"""lesson_lib.exercises: references pass, every catalogued mistake earns its own hint, broken answers
get a message instead of an exception, and the notebooks' "Your turn" cells pass with the
reference solutions put in."""

from __future__ import annotations

import ast
import inspect
import json
import math
from pathlib import Path

import pytest
import torch

import lesson_lib.exercises as exercises
from lesson_lib.exercises import EXERCISES, check, hint, solution
from lesson_lib.exercises.core import CheckResult, check_answer

ROOT = Path(__file__).resolve().parents[1]


def col(table, t, x):
    """table[t] as a (B, 1, ...) float64 column for x."""
    return table[t].reshape([-1] + [1] * (x.ndim - 1))


def like(x, y):
    return y.to(x.dtype)


def ddpm_parts(t, betas, ab):
    beta, a = float(betas[t]), float(ab[t])
    a_prev = float(ab[t - 1]) if t else 1.0
    return beta, a, a_prev, (1 - a_prev) / (1 - a) * beta


def ddpm_mean(x, e, beta, a, shrink=None, coef=None):
    coef = beta / math.sqrt(1 - a) if coef is None else coef
    return (x - coef * e) / math.sqrt(1 - beta if shrink is None else shrink)


def ddim(x, t, tp, e, ab, eta, z, a_prev=None, sig=None, dir_=None, noise=None, first=None):
    a = float(ab[t])
    if a_prev is None:
        a_prev = 1.0 if tp < 0 else float(ab[tp])
    s = (
        eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        if sig is None
        else sig(a, a_prev)
    )
    x0 = (x - math.sqrt(1 - a) * e) / math.sqrt(a) if first is None else first
    d = math.sqrt(1 - a_prev - s * s) if dir_ is None else dir_(a_prev)
    return math.sqrt(a_prev) * x0 + d * e + (s if noise is None else noise) * z


def karras(n, lo, hi, rho, last=None):
    """EDM's sigmas (Karras et al. 2022, Eq. 5), i / last with last = n - 1 unless given."""
    i = torch.arange(n, dtype=torch.float64) / (n - 1 if last is None else last)
    return (hi ** (1 / rho) + i * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


def vp(ab, t):
    """sqrt(alpha_bar_t), 1 at t = -1."""
    return 1.0 if t < 0 else float(ab[t]) ** 0.5


def edm(ab, t):
    """EDM's sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), 0 at t = -1."""
    return (1 / vp(ab, t) ** 2 - 1) ** 0.5


def attention(q, k, v, mask, scale=None, mode="mask"):
    w = (q @ k.mT) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if mask is None or mode == "ignore":
        return torch.softmax(w, -1) @ v
    keep = mask.unsqueeze(1) if mode != "invert" else ~mask.unsqueeze(1)
    if mode == "after":
        return torch.softmax(w, -1) * keep @ v
    return torch.softmax(w.masked_fill(~keep, float("-inf")), -1) @ v


def cos_f(T, s, power=2):
    u = torch.arange(T + 1, dtype=torch.float64) / T
    return torch.cos((u + s) / (1 + s) * math.pi / 2) ** power


def from_f(f, lo=0.0, hi=0.999):
    return torch.cumprod(1 - torch.clamp(1 - f[1:] / f[:-1], lo, hi), 0)


def emb(t, dim, order="sincos", denom=None, sign=-1, shift=0):
    h = dim // 2
    f = torch.exp(sign * math.log(10000) * torch.arange(h) / (denom or h - 1))
    a = (t + shift).float()[:, None] * f
    if order == "interleave":
        return torch.stack([a.sin(), a.cos()], dim=2).reshape(len(t), dim)
    return torch.cat([a.cos(), a.sin()] if order == "cossin" else [a.sin(), a.cos()], 1)


def noised(x0, t, eps, ab, root=True, shift=0):
    a = col(ab, t - shift, x0)
    return like(x0, (a.sqrt() * x0 + (1 - a).sqrt() * eps) if root else (a * x0 + (1 - a) * eps))


def kl_terms(m, lv, var=None):
    return m**2 + (lv.exp() if var is None else var) - 1 - lv


# Every catalogued mistake written out as a learner might write it, in catalogue order.
WRONG = {
    "q_sample": [
        lambda x0, t, eps, ab: noised(x0, t, eps, ab, root=False),
        lambda x0, t, eps, ab: like(x0, col(ab, t, x0).sqrt() * x0 + (1 - col(ab, t, x0)) * eps),
        lambda x0, t, eps, ab: noised(x0, t, eps, ab, shift=1),
        lambda x0, t, eps, ab: noised(eps, t, x0, ab),
        lambda x0, t, eps, ab: like(x0, x0 + (1 - col(ab, t, x0)).sqrt() * eps),
    ],
    "q_step": [
        lambda x, t, eps, b: like(x, (1 - col(b, t, x)) * x + col(b, t, x) * eps),
        lambda x, t, eps, b: like(x, x + col(b, t, x).sqrt() * eps),
        lambda x, t, eps, b: like(
            x, (1 - col(b, t - 1, x)).sqrt() * x + col(b, t - 1, x).sqrt() * eps
        ),
        lambda x, t, eps, b: like(x, col(b, t, x).sqrt() * x + (1 - col(b, t, x)).sqrt() * eps),
    ],
    "cosine_alpha_bar": [
        lambda T, s=0.008: cos_f(T, s)[1:] / cos_f(T, s)[0],
        lambda T, s=0.008: torch.cat(
            [torch.ones(1, dtype=torch.float64), from_f(cos_f(T, s))[:-1]]
        ),
        lambda T, s=0.008: from_f(cos_f(T, s, power=1)),
        lambda T, s=0.008: from_f(cos_f(T, s), 1e-4, 0.9999),
    ],
    "log_snr": [
        lambda ab: (1 - ab).log() - ab.log(),
        lambda ab: ab / (1 - ab),
        lambda ab: (ab / (1 - ab)).log() / math.log(10),
        lambda ab: 0.5 * (ab / (1 - ab)).log(),
        lambda ab: ab.log(),
    ],
    "timestep_embedding": [
        lambda t, dim: emb(t, dim, order="cossin"),
        lambda t, dim: emb(t, dim, order="interleave"),
        lambda t, dim: emb(t, dim, denom=dim // 2),
        lambda t, dim: emb(t, dim, sign=1),
        lambda t, dim: emb(t, dim, shift=1),
    ],
    "eps_loss": [
        lambda m, x0, t, eps, ab: ((m(x0, t) - eps) ** 2).mean(),
        lambda m, x0, t, eps, ab: ((m(noised(x0, t, eps, ab), t) - x0) ** 2).mean(),
        lambda m, x0, t, eps, ab: ((m(noised(x0, t, eps, ab, root=False), t) - eps) ** 2).mean(),
        lambda m, x0, t, eps, ab: ((m(noised(x0, t, eps, ab), t) - eps) ** 2).sum(),
        lambda m, x0, t, eps, ab: (m(noised(x0, t, eps, ab), t) - eps).abs().mean(),
        lambda m, x0, t, eps, ab: ((m(noised(x0, t, eps, ab, shift=1), t) - eps) ** 2).mean(),
    ],
    "drop_labels": [
        lambda y, u, p: y.masked_fill(u >= p, 10),
        lambda y, u, p: y.masked_fill(u < p, 0),
    ],
    "ddpm_step": [
        lambda x, t, e, b, ab, z: (
            ddpm_mean(x, e, *ddpm_parts(t, b, ab)[:2])
            + (math.sqrt(float(b[t])) * z if t > 0 else 0)
        ),
        lambda x, t, e, b, ab, z: (
            ddpm_mean(x, e, float(b[t]), float(ab[t]))
            + math.sqrt((1 - float(ab[t - 1])) / (1 - float(ab[t])) * float(b[t])) * z
        ),
        lambda x, t, e, b, ab, z: ddpm_mean(x, e, float(b[t]), float(ab[t])) + (z if t > 0 else 0),
        lambda x, t, e, b, ab, z: (
            ddpm_mean(x, e, float(b[t]), float(ab[t])) + ddpm_parts(t, b, ab)[3] * z
        ),
        lambda x, t, e, b, ab, z: (
            ddpm_mean(x, e, float(b[t]), float(ab[t]), shrink=float(ab[t]))
            + math.sqrt(ddpm_parts(t, b, ab)[3]) * z
        ),
        lambda x, t, e, b, ab, z: (
            ddpm_mean(x, e, float(b[t]), 0, coef=float(b[t]) / (1 - float(ab[t])))
            + math.sqrt(ddpm_parts(t, b, ab)[3]) * z
        ),
        lambda x, t, e, b, ab, z: EXERCISES["ddpm_step"].reference(x, t - 1, e, b, ab, z),
    ],
    "ddim_step": [
        lambda x, t, tp, e, ab, eta, z: ddim(x, t, tp, e, ab, eta, z, a_prev=float(ab[tp])),
        lambda *a: ddim(*a, sig=lambda c, p: a[5] * (1 - p) / (1 - c) * (1 - c / p)),
        lambda *a: ddim(*a, dir_=lambda p: math.sqrt(1 - p)),
        lambda *a: ddim(*a, noise=0),
        lambda *a: ddim(*a, noise=1),
        lambda *a: ddim(*a, sig=lambda c, p: a[5] * math.sqrt(1 - c / p)),
        lambda *a: ddim(*a, first=a[0]),
        lambda x, t, tp, *r: EXERCISES["ddim_step"].reference(x, t - 1, tp - 1, *r),
    ],
    "x0_from_eps": [
        lambda x, t, e, ab: like(x, (x - (1 - col(ab, t, x)) * e) / col(ab, t, x)),
        lambda x, t, e, ab: like(x, (x + (1 - col(ab, t, x)).sqrt() * e) / col(ab, t, x).sqrt()),
        lambda x, t, e, ab: like(x, (x - col(ab, t, x).sqrt() * e) / (1 - col(ab, t, x)).sqrt()),
        lambda x, t, e, ab: like(x, x - (1 - col(ab, t, x)).sqrt() * e),
        lambda x, t, e, ab: like(
            x, (x - (1 - col(ab, t - 1, x)).sqrt() * e) / col(ab, t - 1, x).sqrt()
        ),
    ],
    "score_from_eps": [
        lambda e, t, ab: like(e, e / (1 - col(ab, t, e)).sqrt()),
        lambda e, t, ab: like(e, -e / (1 - col(ab, t, e))),
        lambda e, t, ab: like(e, -(1 - col(ab, t, e)).sqrt() * e),
        lambda e, t, ab: like(e, -e / col(ab, t, e).sqrt()),
        lambda e, t, ab: like(e, -e / (1 - col(ab, t - 1, e)).sqrt()),
        lambda e, t, ab: -e / (1 - col(ab, t, e).to(e.dtype)).sqrt(),
    ],
    "langevin_step": [
        lambda x, s, h, z: x + h * s + h**0.5 * z,
        lambda x, s, h, z: x + 0.5 * h * s + h * z,
        lambda x, s, h, z: x + 0.5 * h * s,
        lambda x, s, h, z: x - 0.5 * h * s + h**0.5 * z,
    ],
    "guided_eps": [
        lambda c, u, w: u + (w + 1) * (c - u),
        lambda c, u, w: u + w * (u - c),
        lambda c, u, w: c + w * (u - c),
        lambda c, u, w: c * w,
    ],
    "cross_attention": [
        lambda q, k, v, mask=None: attention(q, k, v, mask, mode="ignore"),
        lambda q, k, v, mask=None: attention(q, k, v, mask, mode="invert"),
        lambda q, k, v, mask=None: attention(q, k, v, mask, mode="after"),
        lambda q, k, v, mask=None: attention(q, k, v, mask, scale=1.0),
        lambda q, k, v, mask=None: attention(q, k, v, mask, scale=1 / q.shape[-1]),
    ],
    "latent_scale": [
        lambda z: float(z.std()),
        lambda z: float(1 / z.var()),
        lambda z: 0.18215,
    ],
    "kl_divergence": [
        lambda m, lv: 0.5 * kl_terms(m, lv).reshape(len(m), -1).mean(1),
        lambda m, lv: kl_terms(m, lv).reshape(len(m), -1).sum(1),
        lambda m, lv: -0.5 * kl_terms(m, lv).reshape(len(m), -1).sum(1),
        lambda m, lv: 0.5 * kl_terms(m, lv, var=lv).reshape(len(m), -1).sum(1),
        lambda m, lv: 0.5 * kl_terms(m, lv, var=(0.5 * lv).exp()).reshape(len(m), -1).sum(1),
    ],
    "flow_path": [
        lambda x0, e, s: col(s, slice(None), x0) * x0 + (1 - col(s, slice(None), x0)) * e,
        lambda x0, e, s: (
            (1 - col(s, slice(None), x0)) ** 0.5 * x0 + col(s, slice(None), x0) ** 0.5 * e
        ),
        lambda x0, e, s: x0 + col(s, slice(None), x0) * e,
    ],
    "flow_from_vp": [
        lambda x, t, ab: like(x, x / col(ab, t, x) ** 0.5),
        lambda x, t, ab: like(x, x / (col(ab, t, x) + 1 - col(ab, t, x))),
        lambda x, t, ab: like(x, x * (col(ab, t, x) ** 0.5 + (1 - col(ab, t, x)) ** 0.5)),
    ],
    "karras_sigmas": [
        lambda n, lo, hi, rho=7.0: karras(n, lo, hi, rho).flip(0),
        lambda n, lo, hi, rho=7.0: karras(n, lo, hi, 1 / rho),
        lambda n, lo, hi, rho=7.0: karras(n, lo, hi, 1.0),
        lambda n, lo, hi, rho=7.0: karras(n, lo, hi, rho, last=n),
    ],
    "euler_sigma_step": [
        lambda x, t, tp, e, ab: x + (edm(ab, tp) - edm(ab, t)) * e,
        lambda x, t, tp, e, ab: vp(ab, tp) * (x / vp(ab, t) + (edm(ab, t) - edm(ab, tp)) * e),
        lambda x, t, tp, e, ab: (
            vp(ab, tp)
            * (x / vp(ab, t) + ((1 - vp(ab, tp) ** 2) ** 0.5 - (1 - vp(ab, t) ** 2) ** 0.5) * e)
        ),
        lambda x, t, tp, e, ab: (
            float(ab[tp]) ** 0.5
            * (x / vp(ab, t) + (((1 - ab[tp]) / ab[tp]).item() ** 0.5 - edm(ab, t)) * e)
        ),
    ],
}
MISTAKES = [(name, i) for name, answers in WRONG.items() for i in range(len(answers))]


def failures(checker) -> list[str]:
    """What a checker gets wrong: a reference rejected, or a mistake accepted or mis-hinted."""
    found = []
    for name, ex in EXERCISES.items():
        if not checker(ex, ex.reference).ok:
            found.append(f"{name}: reference rejected")
        hints = [m.hint for m in ex.mistakes]
        for i, wrong in enumerate(WRONG[name]):
            result = checker(ex, wrong)
            named = [j for j, h in enumerate(hints) if h in result.message]
            if result.ok or named != [i]:
                found.append(f"{name} mistake {i}: ok={result.ok}, hints named {named}")
    return found


def test_every_exercise_has_its_mistakes_written_out_here_with_distinct_hints():
    assert set(WRONG) == set(EXERCISES)
    for name, ex in EXERCISES.items():
        assert len(WRONG[name]) == len(ex.mistakes), name
        hints = [m.hint for m in ex.mistakes]
        assert len(set(hints)) == len(hints) >= 2, name


@pytest.mark.parametrize("name", EXERCISES)
def test_the_reference_passes(name, capsys):
    result = check(name, EXERCISES[name].reference)
    assert result.ok, result.message
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize(("name", "i"), MISTAKES, ids=[f"{n}-{i}" for n, i in MISTAKES])
def test_each_mistake_fails_with_its_own_hint(name, i):
    result = check_answer(EXERCISES[name], WRONG[name][i])
    hints = [m.hint for m in EXERCISES[name].mistakes]
    assert not result.ok
    assert [j for j, h in enumerate(hints) if h in result.message] == [i], result.message


def test_a_checker_that_accepts_or_rejects_everything_is_caught():
    assert failures(check_answer) == []
    assert failures(lambda ex, answer: CheckResult(True, "✓"))
    assert failures(lambda ex, answer: CheckResult(False, "✗"))


def test_a_stub_is_not_attempted_yet(capsys):
    def q_sample(x0, t, eps, alpha_bar):
        raise NotImplementedError

    result = check("q_sample", q_sample)
    assert not result.ok and "not attempted yet" in result.message
    assert "not attempted yet" in capsys.readouterr().out


def test_an_unknown_name_raises_a_key_error_listing_the_known_ones():
    with pytest.raises(KeyError, match="q_smaple.*q_sample.*cross_attention"):
        check("q_smaple", lambda *a: None)
    with pytest.raises(KeyError, match="q_smaple"):
        hint("q_smaple")


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (lambda x0, t, eps, ab: x0 @ x0, "raised RuntimeError"),
        (lambda x0, t, eps, ab: ab[t] * x0, "raised RuntimeError"),  # (B,) against (..., W)
        (lambda x0, t, eps, ab: x0[0], "shape"),
        (lambda x0, t, eps, ab: x0.double(), "dtype torch.float64; expected torch.float32"),
        (lambda x0, t, eps, ab: x0 / 0, "inf at element (0, 0, 0, 0) (t = 0)"),
        (lambda x0, t, eps, ab: x0 * math.nan, "returned nan"),
        (lambda x0, t, eps, ab: None, "forget `return`"),
        (lambda x0, t, eps, ab: x0 * (-1) ** 0.5, "complex numbers"),
        (lambda x0, t, eps, ab: [1.0], "returned list"),
        (lambda x0, t: x0, "raised TypeError"),
        ("q_sample", "pass your function itself"),
    ],
)
def test_a_broken_answer_gets_a_message_and_check_does_not_raise(answer, said):
    result = check("q_sample", answer)
    assert not result.ok and said in result.message, result.message


def test_a_shape_error_comes_with_the_broadcasting_tip():
    result = check("q_sample", lambda x0, t, eps, ab: (ab[t].sqrt() * x0).float())
    assert "Tip:" in result.message and "view(-1" in result.message


def test_an_unknown_mistake_gets_the_largest_error_and_where():
    def off_at_the_end(x0, t, eps, alpha_bar):
        x_t = EXERCISES["q_sample"].reference(x0, t, eps, alpha_bar)
        return torch.where(t.reshape([-1] + [1] * (x0.ndim - 1)) == 999, x_t + 0.5, x_t)

    result = check("q_sample", off_at_the_end)
    assert not result.ok
    assert "largest error is 0.5 at element (1," in result.message and "(t = 999)" in result.message


def test_a_negative_square_root_at_t_prev_minus_1_is_still_diagnosed():
    def ddim_step(x_t, t, t_prev, eps, alpha_bar, eta, z):  # alpha_bar[-1] at t_prev = -1
        ab, ab_prev = alpha_bar[t].item(), alpha_bar[t_prev].item()
        x0 = (x_t - (1 - ab) ** 0.5 * eps) / ab**0.5
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5
        return ab_prev**0.5 * x0 + (1 - ab_prev - sigma**2) ** 0.5 * eps + sigma * z

    assert EXERCISES["ddim_step"].mistakes[0].hint in check("ddim_step", ddim_step).message


def test_float32_arithmetic_in_a_float64_answer_is_named():
    def in_float32(T, s=0.008):
        return EXERCISES["cosine_alpha_bar"].reference(T, s).float().double()

    assert "float32" in check("cosine_alpha_bar", in_float32).message


def test_hint_solution_and_the_catalogue(capsys):
    hint("ddim_step")
    assert "Hint for ddim_step" in capsys.readouterr().out
    solution("ddim_step")
    assert "def ddim_step(x_t, t, t_prev, eps, alpha_bar, eta, z):" in capsys.readouterr().out
    assert {ex.notebook for ex in EXERCISES.values()} == {f"{i:02d}" for i in range(1, 11)}
    assert all(ex.name in ex.statement for ex in EXERCISES.values())


def test_check_leaves_the_global_random_state_alone():
    state = torch.get_rng_state()
    check_answer(EXERCISES["latent_scale"], EXERCISES["latent_scale"].reference)
    assert torch.equal(state, torch.get_rng_state())


def _your_turn(path: Path) -> tuple[list[str], int]:
    """The first code cell and the "Your turn" code cells, the stubs replaced by the references;
    and how many stubs there were."""
    cells = json.loads(path.read_text())["cells"]
    sources = ["".join(c["source"]) for c in cells]
    start = next(i for i, c in enumerate(cells) if sources[i].startswith("## Your turn"))
    code = [s for c, s in zip(cells, sources, strict=True) if c["cell_type"] == "code"]
    out, stubs = [code[0]], 0
    for c, src in zip(cells[start:], sources[start:], strict=True):
        if c["cell_type"] != "code":
            continue
        if "raise NotImplementedError" in src:
            stubs += 1
            src = inspect.getsource(EXERCISES[ast.parse(src).body[0].name].reference)
        out.append(src)
    return out, stubs


@pytest.mark.parametrize(
    "path", sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem
)
def test_the_notebooks_exercises_pass_with_the_reference_solutions(path, monkeypatch):
    verdicts = []

    def recording_check(name, answer):
        verdicts.append(result := check(name, answer))
        return result

    monkeypatch.setattr(exercises, "check", recording_check)
    sources, stubs = _your_turn(path)
    namespace: dict = {}
    for source in sources:
        exec(compile(source, str(path), "exec"), namespace)
    wanted = sum(ex.notebook == path.name[:2] for ex in EXERCISES.values())
    assert stubs == len(verdicts) == wanted >= 1
    assert all(v.ok for v in verdicts), [v.message for v in verdicts]
