"""Fast ODE samplers: Euler, Heun (Karras et al. 2022) and DPM-Solver++(2M) (Lu et al. 2022b).

All three solve the probability-flow ODE of a course eps-model. In EDM's variables (Karras et al.
2022, Eq. 4 and Table 1 for a VP schedule) the ODE is one line:

| here          | paper                         | relation                                        |
|---------------|-------------------------------|-------------------------------------------------|
| `alpha`       | alpha_t (Lu), s(t) (Karras)   | sqrt(alpha_bar_t); 1 at t = -1 ("done")         |
| `edm_sigma`   | sigma(t) (Karras)             | sqrt((1 - alpha_bar_t) / alpha_bar_t); 0 at -1  |
| `x_t / alpha` | x (Karras), x_bar (Song 2021) | the noisy point, rescaled to unit signal        |
| `h`           | h_i (Lu)                      | lambda_{i} - lambda_{i-1}, log-SNR lambda = -2 log edm_sigma |

    d(x_t / alpha) / d edm_sigma = eps(x_t, t)    (Karras et al. 2022, Eq. 3; Song et al. 2021, Eq. 14)

Euler's method on it is DDIM with eta = 0 (`lesson_lib.samplers.ddim_step`); Heun adds a second
evaluation at the next grid point; DPM-Solver++(2M) reuses the previous step's x0 instead. Each
is one small step function; `_solver` wraps it in the loop the three share.

Every network call is at one of the schedule's integer timesteps, the same step for the whole
batch. `solver_timesteps` picks them; the last step goes to t = -1, where alpha_bar = 1. The noise
levels come from `lesson_lib.conventions.at_step` (`alpha`, `edm_sigma`).
`network_calls(sampler, steps)` says how many calls a run makes (Heun: 2 * steps - 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from .checks import check_batched, check_choice, check_int, check_number, check_real
from .conventions import at_step
from .samplers import Recorder, Trajectory, ddim_sample, ddim_timesteps, ddim_update, predict
from .schedules import NoiseSchedule

__all__ = [
    "SOLVER_SPACINGS",
    "karras_sigmas",
    "solver_timesteps",
    "euler_sample",
    "heun_sample",
    "dpmpp_2m_sample",
    "network_calls",
    "steps_for_calls",
]

SOLVER_SPACINGS = ("linspace", "karras", "logsnr")
RHO = 7.0  # Karras et al. 2022, Eq. 5: rho = 7 puts most steps at low noise


def _nearest_timesteps(schedule: NoiseSchedule, log_sigma: torch.Tensor) -> torch.Tensor:
    """The integer timesteps nearest in log sigma to `log_sigma` (N,) (largest first), made
    strictly decreasing: where rounding merges points near t = 0 the earlier ones move up by one."""
    table = at_step(schedule, torch.arange(schedule.T)).edm_sigma.log()  # increasing in t
    ts = (log_sigma[:, None] - table).abs().argmin(1)  # (N,)
    k = torch.arange(len(ts))
    v = (ts + k).flip(0).cummax(0).values.flip(0)  # ts + k non-increasing <=> ts strictly falling
    return v.clamp(max=schedule.T - 1).cummin(0).values - k


def karras_sigmas(n: int, sigma_min, sigma_max, rho: float = RHO) -> torch.Tensor:
    """EDM's n noise levels from sigma_max down to sigma_min, uniform in sigma^(1/rho)
    (Karras et al. 2022, Eq. 5): (n,) float64."""
    n = check_int("n", n, low=1)
    sigma_min = check_number("sigma_min", sigma_min, low=0.0, low_open=True)
    sigma_max = check_number("sigma_max", sigma_max, low=sigma_min)
    rho = check_real("rho", rho, low=0.0, low_open=True)
    i = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    root_max, root_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (root_max + i * (root_min - root_max)) ** rho  # Eq. 5


def solver_timesteps(
    schedule: NoiseSchedule, steps: int, spacing: str = "linspace"
) -> torch.Tensor:
    """The `steps` timesteps a solver visits, largest first: LongTensor (steps,); then t = -1.

    - "linspace": `steps + 1` points from T-1 down to 0, rounded, the last (0) replaced by "done":
      diffusers' `DPMSolverMultistepScheduler` with `timestep_spacing="linspace"` and
      `final_sigmas_type="zero"`;
    - "karras": EDM's sigmas from sigma(T-1) to sigma(0), uniform in sigma^(1/7) (Karras et al.
      2022, Eq. 5, rho = 7), each mapped to the nearest timestep in log sigma;
    - "logsnr": uniform in log-SNR lambda between the same ends (Lu et al. 2022a, Sec. 3.3).
    """
    T = schedule.T
    steps = check_int("steps", steps, low=1, high=T - 1)
    check_choice("spacing", spacing, SOLVER_SPACINGS)
    if spacing == "linspace":
        return ddim_timesteps(T, steps + 1, "linspace")[:-1]
    i = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1)
    s_max, s_min = at_step(schedule, torch.tensor([T - 1, 0])).edm_sigma
    if spacing == "karras":
        return _nearest_timesteps(schedule, karras_sigmas(steps, s_min, s_max).log())
    return _nearest_timesteps(schedule, s_max.log() + i * (s_min.log() - s_max.log()))


class _Run(NamedTuple):
    """What a solver's step reads: the model call, and alpha and EDM's sigma as lists indexed by
    t, where index -1 ("done") reads the appended 1 and 0."""

    model: Callable
    schedule: NoiseSchedule
    cond: dict
    clip_x0: bool
    alpha: list[float]
    sigma: list[float]

    def predict(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One network call at timestep t: (eps, predicted x0), as `samplers.predict`."""
        return predict(self.model, self.schedule, x, t, self.cond, self.clip_x0)


def _euler_step(run: _Run, x, t: int, t_next: int, eps, x0, last) -> torch.Tensor:
    """Euler's step in sigma, x/alpha += (sigma' - sigma) eps (Karras et al. 2022, Eq. 3): DDIM
    with eta = 0."""
    return ddim_update(run.schedule, x, t, t_next, x0, eps)


def _heun_step(run: _Run, x, t: int, t_next: int, eps, x0, last) -> torch.Tensor:
    """Heun's step (Karras et al. 2022, Algorithm 1, S_churn = 0): d_i = eps (line 4), then a
    second evaluation at the next grid point; the last step, to alpha_bar = 1, is Euler's
    (line 6)."""
    x_next = _euler_step(run, x, t, t_next, eps, x0, last)  # Euler step (Alg. 1, line 5)
    if t_next < 0:
        return x_next
    eps_next, _ = run.predict(x_next, t_next)  # d'_i, line 7
    h = run.sigma[t_next] - run.sigma[t]
    return x_next + run.alpha[t_next] * h / 2 * (eps_next - eps)  # Alg. 1, line 8


def _dpmpp_2m_step(run: _Run, x, t: int, t_next: int, eps, x0, last) -> torch.Tensor:
    """DPM-Solver++(2M)'s step (Lu et al. 2022b, Algorithm 2), with `last` the previous step's
    (t, x0); first order (DDIM) at the first step and the last, to alpha_bar = 1."""
    x_next = ddim_update(run.schedule, x, t, t_next, x0, eps)  # DPM-Solver++(1) = DDIM, Eq. 9
    if t_next < 0 or last is None:
        return x_next
    (t_last, x0_last), sigma = last, run.sigma
    h = math.log(sigma[t] / sigma[t_next])  # h_i = lambda_i - lambda_{i-1}
    h_last = math.log(sigma[t_last] / sigma[t])  # h_{i-1}
    d = (x0 - x0_last) * (h / (2 * h_last))  # Alg. 2: D_i = x0_i + (x0_i - x0_{i-1}) / (2 r_i)
    return x_next + run.alpha[t_next] * (1 - math.exp(-h)) * d  # Eq. 9, D_i for x0


def _solver(name: str, step: Callable, doc: str) -> Callable:
    """A public sampler: the one driver loop (checks, grid, network call, trajectory) around
    `step(run, x, t, t_next, eps, x0, last)`, which returns x at t_next."""

    @torch.no_grad()
    def sample(
        model: Callable,
        schedule: NoiseSchedule,
        x_T: torch.Tensor,
        steps: int = 50,
        spacing: str = "linspace",
        *,
        clip_x0: bool = False,
        progress: bool = False,
        return_trajectory: bool = False,
        **cond,
    ) -> torch.Tensor | Trajectory:
        check_batched("x_T", x_T)
        if not callable(model):
            raise TypeError(f"model must be callable as model(x_t, t, **cond), got {model!r}")
        ts = solver_timesteps(schedule, steps, spacing).tolist()
        level = at_step(schedule, torch.arange(schedule.T))
        alpha, sigma = level.alpha.tolist() + [1.0], level.edm_sigma.tolist() + [0.0]
        run = _Run(model, schedule, cond, clip_x0, alpha, sigma)
        x, record, last = x_T, Recorder(return_trajectory), None
        pairs = list(zip(ts, ts[1:] + [-1], strict=True))
        for t, t_next in tqdm(pairs, disable=not progress, desc="sampling"):
            eps, x0 = run.predict(x, t)
            record(t, x, x0)
            x, last = step(run, x, t, t_next, eps, x0, last), (t, x0)
        return record.result(x)

    sample.__name__ = sample.__qualname__ = name
    sample.__doc__ = doc
    return sample


euler_sample = _solver(
    "euler_sample",
    _euler_step,
    """Euler's method on the PF-ODE in sigma (Karras et al. 2022, Alg. 1 without line 8): DDIM with
    eta = 0 (`ddim_step`) on `solver_timesteps(schedule, steps, spacing)`. x_T: (B, ...).

    Deterministic. Returns x_0 (B, ...), or a `Trajectory` when `return_trajectory`. `steps`
    network calls.
    """,
)

heun_sample = _solver(
    "heun_sample",
    _heun_step,
    """Heun's 2nd-order method on the PF-ODE in sigma (Karras et al. 2022, Algorithm 1, S_churn =
    0), on `solver_timesteps(schedule, steps, spacing)`. x_T: (B, ...).

    The second evaluation is at the next grid point; the last step, to alpha_bar = 1, is Euler's
    (Alg. 1, line 6), so a run makes 2 * steps - 1 network calls. Deterministic. Returns x_0
    (B, ...), or a `Trajectory` when `return_trajectory`.
    """,
)

dpmpp_2m_sample = _solver(
    "dpmpp_2m_sample",
    _dpmpp_2m_step,
    """DPM-Solver++(2M), multistep 2nd order in log-SNR (Lu et al. 2022b, Algorithm 2), on
    `solver_timesteps(schedule, steps, spacing)`. x_T: (B, ...).

    The first step and the last (to alpha_bar = 1) are first order, i.e. DDIM, as in diffusers'
    `DPMSolverMultistepScheduler` (lower_order_final, final_sigmas_type="zero"). `steps` network
    calls; deterministic. Returns x_0 (B, ...), or a `Trajectory` when `return_trajectory`.
    """,
)


_CALLS = {  # network calls of a run with `steps` steps
    ddim_sample: lambda steps: steps,
    euler_sample: lambda steps: steps,
    heun_sample: lambda steps: 2 * steps - 1,
    dpmpp_2m_sample: lambda steps: steps,
}


def network_calls(sampler: Callable, steps: int) -> int:
    """How many times `sampler(model, schedule, x_T, steps)` calls the model: `steps` for
    `ddim_sample`, `euler_sample` and `dpmpp_2m_sample`, 2 * steps - 1 for `heun_sample`.

    A call is one model evaluation of the whole batch (a `cfg`-guided model's is one of batch 2B).
    """
    if sampler not in _CALLS:
        known = ", ".join(f.__name__ for f in _CALLS)
        raise ValueError(
            f"sampler={getattr(sampler, '__name__', sampler)!r} is not known: allowed {known}"
        )
    return _CALLS[sampler](check_int("steps", steps, low=1))


def steps_for_calls(sampler: Callable, calls: int) -> int:
    """The most steps `sampler` can take within `calls` network calls (at least 1)."""
    calls = check_int("calls", calls, low=1)
    steps = 1
    while network_calls(sampler, steps + 1) <= calls:
        steps += 1
    return steps
