"""The checker: run a learner's answer on random cases, compare it with lesson_lib, name the mistake.

An `Exercise` holds the reference solution (what `solution` prints), random `Case`s whose expected
outputs come from lesson_lib's tested functions, and the classic `Mistake`s, each a small wrong
function with its own hint. A wrong answer that agrees with one mistake on every case gets that
mistake's hint; otherwise the verdict names the largest error and where it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..schedules import NoiseSchedule

# Agreement needed per dtype (rtol, atol): float32 rounding for float32, near-exact for float64.
TOLERANCES = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-8, 1e-10)}
SCHEDULES = {"linear": NoiseSchedule.linear(1000), "cosine": NoiseSchedule.cosine(1000)}


@dataclass(frozen=True)
class Mistake:
    """A classic wrong answer, written as a function with the exercise's signature, and its hint."""

    hint: str
    answer: Callable


@dataclass(frozen=True)
class Case:
    """One random input: the arguments, lesson_lib's output on them, and how to describe it."""

    args: tuple  # positional arguments, in the exercise's signature order
    expected: torch.Tensor  # what lesson_lib computes
    label: str  # e.g. "x0 (4, 1, 6, 5) float32, t = [0, 999, 1, 500], linear schedule"
    t: torch.Tensor | int | None = None  # timesteps along the output's first axis (or one int)


@dataclass(frozen=True)
class Exercise:
    """A fill-in exercise: the statement, the reference answer, its cases and its mistakes."""

    name: str
    notebook: str  # "01" ... "10"
    statement: str  # one line, with the signature
    reference: Callable  # the learner-facing solution, tensors in, tensors out
    cases: Callable[[], list[Case]]  # seeded random inputs with lesson_lib's outputs
    mistakes: tuple[Mistake, ...]
    hint: str  # a nudge, printed by hint(name)
    library: str  # what the answers are compared with, e.g. "lesson_lib.forward.q_sample"
    tip: str = ""  # added after an exception or a wrong shape or dtype
    tolerance: tuple[float, float] | None = None  # (rtol, atol) instead of TOLERANCES


@dataclass(frozen=True)
class CheckResult:
    """The verdict of `check`: `.ok` and the `.message` it printed."""

    ok: bool
    message: str

    def __repr__(self) -> str:
        return f"CheckResult(ok={self.ok})"  # the message is already printed


STUB = "not attempted"


@dataclass(frozen=True)
class _Output:
    """An answer's output on one case: the tensor, or what went wrong and whether a catalogued
    mistake can explain it (an exception or a NaN can; a wrong shape or dtype is reported)."""

    value: torch.Tensor | None
    problem: str | None = None
    explainable: bool = False


def check_answer(ex: Exercise, answer) -> CheckResult:
    """The verdict on `answer` for `ex`; never raises because the answer is wrong."""
    if not callable(answer):
        why = f"pass your function itself, as check({ex.name!r}, {ex.name}); got "
        return _no(ex, why + type(answer).__name__)
    cases = ex.cases()
    outputs = []
    for case in cases:
        out = _call(answer, case)
        if out.problem == STUB:
            return CheckResult(
                False,
                f"{ex.name}: not attempted yet. Replace "
                "`raise NotImplementedError` with your code and run the cell again.",
            )
        if out.problem and not out.explainable:
            return _no(ex, f"{out.problem}\n  on {case.label}.", tip=True)
        outputs.append(out)
    if all(not o.problem and _close(ex, o.value, c) for o, c in zip(outputs, cases, strict=True)):
        return CheckResult(
            True, f"✓ {ex.name}: correct! It agrees with {ex.library} on {len(cases)} random cases."
        )
    for mistake in ex.mistakes:
        if _same(ex, outputs, [_call(mistake.answer, c, cast=True) for c in cases], cases):
            return _no(ex, f"this is a classic mistake. {mistake.hint}")
    failed = next(((o, c) for o, c in zip(outputs, cases, strict=True) if o.problem), None)
    if failed:
        return _no(ex, f"{failed[0].problem}\n  on {failed[1].label}.", tip=True)
    why = _largest_error(ex, [o.value for o in outputs], cases)
    return _no(ex, f"{why}\n  Stuck? hint({ex.name!r})")


def _same(ex: Exercise, outputs: list[_Output], mistaken: list[_Output], cases) -> bool:
    """Whether the answer fails where the mistake fails and agrees with it elsewhere (and works
    somewhere)."""
    if all(o.problem for o in outputs):
        return False
    return all(
        (o.value is None) == (m.value is None)
        and (o.value is None or _close(ex, o.value, c, m.value))
        for o, m, c in zip(outputs, mistaken, cases, strict=True)
    )


def _no(ex: Exercise, why: str, tip: bool = False) -> CheckResult:
    extra = f"\n  Tip: {ex.tip}" if tip and ex.tip else ""
    return CheckResult(False, f"✗ {ex.name}: not yet, {why}{extra}")


def _clone(value):
    return value.clone() if isinstance(value, torch.Tensor) else value


def _call(fn: Callable, case: Case, cast: bool = False) -> _Output:
    """fn's output on the case as a detached CPU tensor (cast to the expected dtype if `cast`)."""
    try:
        got = fn(*map(_clone, case.args))
    except NotImplementedError:
        return _Output(None, STUB)
    except Exception as err:  # the learner's bug, reported, never raised
        return _Output(None, f"your function raised {type(err).__name__}: {err}", True)
    want = case.expected
    if want.ndim == 0 and isinstance(got, (int, float)) and not isinstance(got, bool):
        got = torch.tensor(float(got), dtype=want.dtype)
    if not isinstance(got, torch.Tensor):
        hint = " (did you forget `return`?)" if got is None else ""
        return _Output(None, f"it returned {type(got).__name__}{hint}, not a tensor")
    got = got.detach().cpu().to(want.dtype) if cast else got.detach().cpu()
    if got.shape != want.shape:
        return _Output(None, f"it returned shape {tuple(got.shape)}; expected {tuple(want.shape)}")
    if got.is_complex() and not want.is_complex():
        return _Output(None, "it returned complex numbers: ** 0.5 of a negative number?", True)
    if got.dtype != want.dtype:
        return _Output(None, f"it returned dtype {got.dtype}; expected {want.dtype}")
    if want.dtype.is_floating_point and not bool(got.isfinite().all()):
        bad = (~got.isfinite()).nonzero()[0].tolist()
        where = f" at element {tuple(bad)}{_t(case, bad)}" if bad else _t(case, bad)
        return _Output(None, f"it returned {got[tuple(bad)].item()}{where}", True)
    return _Output(got)


def _close(ex: Exercise, got: torch.Tensor, case: Case, want: torch.Tensor | None = None) -> bool:
    want = case.expected if want is None else want
    if want is None or want.shape != got.shape:
        return False
    rtol, atol = ex.tolerance or TOLERANCES.get(case.expected.dtype, (0.0, 0.0))
    return torch.allclose(got.double(), want.double(), rtol=rtol, atol=atol)


def _t(case: Case, index: list[int]) -> str:
    if isinstance(case.t, torch.Tensor) and index:
        return f" (t = {int(case.t[index[0]])})"
    return f" (t = {case.t})" if isinstance(case.t, int) else ""


def _largest_error(ex: Exercise, outputs: list[torch.Tensor], cases: list[Case]) -> str:
    """Where the first wrong case is most wrong; or that it is right to float32 precision only."""
    case, got = next((c, g) for g, c in zip(outputs, cases, strict=True) if not _close(ex, g, c))
    want = case.expected
    if want.dtype == torch.float64 and torch.allclose(got, want, *TOLERANCES[torch.float32]):
        return (
            f"on {case.label} it is right to about 7 digits only: part of it is computed in "
            "float32 (torch.arange and torch.linspace make float32 unless given "
            "dtype=torch.float64). Compute in float64."
        )
    diff = (got.double() - want.double()).abs()
    index = [int(i) for i in torch.unravel_index(diff.argmax(), diff.shape)] if diff.ndim else []
    at = f" at element {tuple(index)}{_t(case, index)}" if index else f"{_t(case, index)}"
    return (
        f"on {case.label} the largest error is {diff.max().item():.3g}{at}: you return "
        f"{got[tuple(index)].item():.6g}, lesson_lib {want[tuple(index)].item():.6g}."
    )


def at(table: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """table[t] (B,) shaped (B, 1, ..., 1) to broadcast against x (B, ...), still float64."""
    return table[t].view(-1, *[1] * (x.ndim - 1))


def broadcast_tip(x: str, table: str = "alpha_bar") -> str:
    """The tip for per-sample coefficients: shape them (B, 1, ..., 1), return x's dtype."""
    return (
        f"{table}[t] has shape (B,): reshape it to (B, 1, ..., 1) so it scales each sample, "
        f"{table}[t].view(-1, *[1] * ({x}.ndim - 1)); compute in float64 (the table's dtype) "
        f"and return {x}'s dtype with .to({x}.dtype)."
    )


def describe(name: str, x: torch.Tensor, t=None, extra: str = "") -> str:
    """A case's label: the tensor's shape and dtype, the timesteps, anything else."""
    parts = [f"{name} {tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"]
    if t is not None:
        parts.append(f"t = {t.tolist() if isinstance(t, torch.Tensor) else t}")
    return ", ".join(parts + ([extra] if extra else []))


def batches(seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]]:
    """Random (x, eps, t, schedule name) in several shapes, float32 and float64; the timesteps
    include 0 and T-1, and two batches mix them with others."""
    g = torch.Generator().manual_seed(seed)
    mid = [int(i) for i in torch.randint(2, 998, (4,), generator=g)]
    specs = [
        ((4, 1, 6, 5), torch.float32, "linear", [0, 999, mid[0], mid[1]]),
        ((1, 3, 4, 4), torch.float64, "cosine", [0]),
        ((3, 2), torch.float32, "cosine", [999, mid[2], 0]),
        ((5, 1, 3, 7), torch.float64, "linear", [mid[3], 0, 999, 1, 998]),
    ]
    out = []
    for shape, dtype, schedule, ts in specs:
        x = torch.randn(shape, generator=g, dtype=dtype)
        out.append((x, torch.randn(shape, generator=g, dtype=dtype), torch.tensor(ts), schedule))
    return out
