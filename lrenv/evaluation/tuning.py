"""Equal-budget tuning of the baselines: the grid of trials, and the choice of the best.

Every baseline gets the same number of trials per task: a log grid over its peak LR
(:data:`LR_SPAN` times the task's ``default_lr``, inside its LR range) and, where it has
one, its second parameter. A setting's score is its mean episode return ``log(L_0/L_T)``
over the tuning seeds; the best one (first in grid order on ties) is the tuned baseline.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from lrenv.baselines import get_baseline
from lrenv.evaluation.runner import Episode
from lrenv.task import TaskConfig

#: The peak-LR grid spans ``default_lr`` times these factors (log-spaced, clipped to the range).
LR_SPAN = (0.3, 30.0)


def lr_grid(config: TaskConfig, n: int) -> list[float]:
    """``n`` peak LRs log-spaced over ``default_lr · LR_SPAN``, inside the task's LR range.

    With ``n = 1`` the grid is the span's geometric middle, ``3 · default_lr``.
    """
    if n < 1:
        raise ValueError(f"an LR grid needs at least one point, got {n}")
    low = max(config.default_lr * LR_SPAN[0], config.lr_range[0])
    high = min(config.default_lr * LR_SPAN[1], config.lr_range[1])
    if n == 1:
        return [float(math.sqrt(low * high))]
    return [float(v) for v in np.geomspace(low, high, n)]


def tuning_grid(name: str, config: TaskConfig, trials: int) -> list[dict[str, float]]:
    """The trials of baseline ``name`` on a task: every baseline gets the same budget.

    A baseline with one parameter tries ``trials`` peak LRs (:func:`lr_grid`); one with a
    second parameter tries ``trials / 2`` peak LRs times its two values of that parameter.

    Args:
        name: A key of :data:`lrenv.baselines.BASELINES`.
        config: The task's config (default LR and range).
        trials: Trials per baseline, a positive even number.

    Returns:
        One dict of keyword arguments of the baseline's policy per trial.
    """
    baseline = get_baseline(name)
    if not isinstance(trials, (int, np.integer)) or trials < 2 or trials % 2:
        raise ValueError(f"trials must be an even number >= 2 (two-parameter baselines split it in half), got {trials!r}")
    if baseline.second is None:
        return [{"lr": lr} for lr in lr_grid(config, trials)]
    lrs = lr_grid(config, trials // len(baseline.values))
    return [{"lr": lr, baseline.second: v} for v in baseline.values for lr in lrs]


def select_tuned(episodes: list[Episode], tasks: list[str], baselines: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """Best setting per (task, baseline): highest mean tuning score, first in grid order on ties."""
    trials: dict[tuple[str, str], dict[tuple, list[float]]] = defaultdict(dict)
    for e in episodes:
        if e.role == "tune":
            trials[(e.task, e.method)].setdefault(as_params(e.params), []).append(e.score)
    tuned: dict[tuple[str, str], dict[str, Any]] = {}
    for task in tasks:
        for name in baselines:
            table = trials[(task, name)]
            scores = {p: float(np.mean(v)) for p, v in table.items()}
            best = max(scores, key=lambda p: scores[p])  # dicts keep grid order: first wins ties
            tuned[(task, name)] = {"params": dict(best), "score": scores[best], "trials": scores}
    return tuned


def as_params(d: dict[str, float]) -> tuple[tuple[str, float], ...]:
    """Parameters as a sorted tuple: hashable, and equal for equal settings."""
    return tuple(sorted((k, float(v)) for k, v in d.items()))
