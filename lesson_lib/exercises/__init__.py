"""Exercises that check themselves: the learner writes the formula, the course says what is wrong.

    from lesson_lib.exercises import check, hint, solution
    check("q_sample", my_q_sample)  # prints the verdict; returns .ok and .message
    hint("q_sample")                # a nudge
    solution("q_sample")            # the reference code

`EXERCISES` maps every name to its `Exercise` (`.notebook`, `.statement`). Each module below holds
the exercises of a few notebooks; a new notebook's exercises are a new module added to `_GROUPS`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from . import flows, latent, networks, noising, sampling, score
from .core import CheckResult, Exercise, check_answer

__all__ = ["EXERCISES", "CheckResult", "Exercise", "check", "hint", "solution"]

_GROUPS = (noising, networks, sampling, score, latent, flows)
EXERCISES: dict[str, Exercise] = {ex.name: ex for group in _GROUPS for ex in group.EXERCISES}


def _exercise(name: str) -> Exercise:
    if name not in EXERCISES:
        raise KeyError(f"no exercise named {name!r}; known: {', '.join(EXERCISES)}")
    return EXERCISES[name]


def check(name: str, answer: Callable) -> CheckResult:
    """Test `answer` against lesson_lib on random inputs; print and return the verdict.

    Raises KeyError for an unknown `name`, never because the answer is wrong or unfinished.
    """
    result = check_answer(_exercise(name), answer)
    print(result.message)
    return result


def hint(name: str) -> None:
    """Print a nudge for exercise `name`."""
    print(f"Hint for {name}: {_exercise(name).hint}")


def solution(name: str) -> None:
    """Print the reference solution of exercise `name`."""
    print(inspect.getsource(_exercise(name).reference))
