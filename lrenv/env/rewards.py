"""Rewards: convergence progress of an epoch, for N runs at once.

``"log_progress"`` (default)
    ``log(L_{t-1} / L_t)`` on the validation loss. An episode's return telescopes to
    ``log(L_0 / L_T)``, so it rewards the final loss without the bias of greedy one-epoch
    rewards towards small learning rates.
``"final_loss"``
    0 until the last epoch, then ``log(L_0 / L_T)``: the same return, given only at the end.
``"time_to_target"``
    -1 per epoch until the validation loss reaches the target loss; the episode then ends
    (``terminated``). Rewards fast convergence.

Divergence ends the episode (``terminated``) with a finite penalty p (``divergence_penalty``):
for the loss-based rewards the diverged epoch's reward is set so the episode's return is
exactly ``-p`` (as if the final loss were ``L_0 * e^p``); for ``time_to_target`` the run is
charged every epoch left in its budget plus p.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RewardInput:
    """What a reward sees for N runs after an epoch (arrays of shape ``(N,)``)."""

    epoch: np.ndarray  # epochs done, 1..T
    epochs: np.ndarray  # budget T
    first_valid: np.ndarray  # L_0
    prev_valid: np.ndarray  # L_{t-1}
    valid: np.ndarray  # L_t
    diverged: np.ndarray
    target: np.ndarray  # target validation loss (nan where none)
    returns: np.ndarray  # return collected so far in the episode


def _log_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.maximum(a, 1e-30)) - np.log(np.maximum(b, 1e-30))


def _diverged_to(r: np.ndarray, inp: RewardInput, penalty: float) -> np.ndarray:
    # make the episode's return exactly -penalty on divergence
    return np.where(inp.diverged, -penalty - inp.returns, r)


def log_progress(inp: RewardInput, penalty: float) -> tuple[np.ndarray, np.ndarray]:
    return _diverged_to(_log_ratio(inp.prev_valid, inp.valid), inp, penalty), np.zeros_like(inp.diverged)


def final_loss(inp: RewardInput, penalty: float) -> tuple[np.ndarray, np.ndarray]:
    r = np.where(inp.epoch >= inp.epochs, _log_ratio(inp.first_valid, inp.valid), 0.0)
    return _diverged_to(r, inp, penalty), np.zeros_like(inp.diverged)


def time_to_target(inp: RewardInput, penalty: float) -> tuple[np.ndarray, np.ndarray]:
    reached = ~inp.diverged & (inp.valid <= inp.target)
    left = (inp.epochs - inp.epoch).astype(np.float64)
    r = np.where(inp.diverged, -1.0 - left - penalty, -1.0)
    return r, reached


RewardFn = Callable[[RewardInput, float], tuple[np.ndarray, np.ndarray]]

REWARD_FUNCTIONS: dict[str, RewardFn] = {
    "log_progress": log_progress,
    "final_loss": final_loss,
    "time_to_target": time_to_target,
}


def get_reward(name: str) -> RewardFn:
    """The reward function called ``name``; returns ``(reward[N], target_reached[N])``."""
    if not (isinstance(name, str) and name in REWARD_FUNCTIONS):
        raise ValueError(f"unknown reward {name!r}; choose one of {', '.join(REWARD_FUNCTIONS)}")
    return REWARD_FUNCTIONS[name]


def resolve_target(reward: str, target_loss: float | None, task_target: float | None, task_name: str) -> float | None:
    """The target loss a reward uses: ``target_loss`` if given, else the task's; required by time_to_target."""
    target = target_loss if target_loss is not None else task_target
    if reward == "time_to_target" and target is None:
        raise ValueError(f"reward 'time_to_target' needs a target loss; task {task_name!r} defines none: pass target_loss=")
    return target
