"""Actions: a number in [-1, 1] -> the learning rate of the next epoch.

``"absolute"`` maps the action log-uniformly onto the task's LR range:
``lr = low * (high / low) ** ((a + 1) / 2)``. ``"relative"`` multiplies the current LR by a
factor in ``[1/f, f]``: ``lr = clip(lr_prev * f ** a, low, high)``. Actions outside [-1, 1]
are clipped; non-finite actions are an error.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

ACTION_MODES = ("absolute", "relative")


class ActionMapping:
    """Maps actions of N runs to learning rates.

    Args:
        mode: ``"absolute"`` or ``"relative"``.
        relative_factor: f of relative mode, > 1.
    """

    def __init__(self, mode: str = "absolute", relative_factor: float = 2.0) -> None:
        if mode not in ACTION_MODES:
            raise ValueError(f"unknown action mode {mode!r}; choose one of {', '.join(ACTION_MODES)}")
        if not (np.isfinite(relative_factor) and relative_factor > 1):
            raise ValueError(f"relative_factor must be a finite number > 1, got {relative_factor!r}")
        self.mode = mode
        self.relative_factor = float(relative_factor)
        self.space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def to_lr(self, action: np.ndarray, current_lr: np.ndarray, lr_range: np.ndarray) -> np.ndarray:
        """Learning rates for actions ``(N, 1)`` (or ``(N,)``), current LRs ``(N,)``, ranges ``(N, 2)``."""
        a = np.asarray(action, dtype=np.float64).reshape(len(current_lr), -1)
        if a.shape[1] != 1:
            raise ValueError(f"expected one action value per run, got shape {np.shape(action)}")
        a = a[:, 0]
        if not np.all(np.isfinite(a)):
            raise ValueError(
                f"action {np.asarray(action).tolist()} is not finite; actions must be finite numbers "
                "in [-1, 1] (values outside are clipped)"
            )
        a = np.clip(a, -1.0, 1.0)
        low, high = np.asarray(lr_range, dtype=np.float64).T
        if self.mode == "absolute":
            return low * (high / low) ** ((a + 1.0) / 2.0)
        return np.clip(np.asarray(current_lr, dtype=np.float64) * self.relative_factor**a, low, high)

    def to_action(self, lr: np.ndarray, current_lr: np.ndarray, lr_range: np.ndarray) -> np.ndarray:
        """The action that asks for ``lr`` (inverse of :meth:`to_lr`, clipped to [-1, 1]); ``(N, 1)``."""
        lr = np.asarray(lr, dtype=np.float64).reshape(-1)
        low, high = np.asarray(lr_range, dtype=np.float64).T
        if self.mode == "absolute":
            a = 2.0 * np.log(lr / low) / np.log(high / low) - 1.0
        else:
            a = np.log(lr / np.asarray(current_lr, dtype=np.float64)) / np.log(self.relative_factor)
        return np.clip(a, -1.0, 1.0).astype(np.float32).reshape(-1, 1)
