"""Actions: a number in [-1, 1] -> the learning rate of the next epoch.

``"absolute"`` maps the action log-uniformly onto the task's LR range:
``lr = low * (high / low) ** ((a + 1) / 2)``. ``"relative"`` multiplies the current LR by a
factor in ``[1/f, f]``: ``lr = clip(lr_prev * f ** a, low, high)``.

Input rules (:func:`check_actions`): an action is a real number — a float or integer numpy
array, a Python int or float, or a tensor — one per run, of shape ``(N,)`` or ``(N, 1)``
(one run: also ``()``). Finite values outside [-1, 1] are clipped. Bools, strings, object
and complex arrays are a ``TypeError`` (never read as numbers); another shape, an empty
array or a NaN/inf value is a ``ValueError``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from lrenv.task import is_real, to_float

ACTION_MODES = ("absolute", "relative")
_REAL_KINDS = "fiu"  # numpy dtype kinds of float, signed and unsigned integer arrays


def check_actions(action: Any, n: int, *, scalar_ok: bool = False) -> np.ndarray:
    """Actions of ``n`` runs as float64 ``(n,)``, clipped to [-1, 1] (rules in the module doc).

    Args:
        action: ``(n,)`` or ``(n, 1)`` real numbers; ``()`` too when ``scalar_ok``.
        n: Number of runs.
        scalar_ok: Accept one bare number (for a single run).

    Raises:
        TypeError: Not real numbers (bool, str, object, complex, ...).
        ValueError: Another shape, or a non-finite value.
    """
    if isinstance(action, torch.Tensor):
        action = action.detach().cpu()
        # numpy has no bfloat16; float64 holds every float dtype exactly
        action = (action.double() if action.is_floating_point() else action).numpy()
    elif isinstance(action, int) and not isinstance(action, bool):
        action = max(-1, min(1, action))  # exact clip: a huge int has no float64 (nor int64) value
    try:
        a = np.asarray(action)
    except (TypeError, ValueError) as exc:  # e.g. ragged nested lists
        raise ValueError(f"action {action!r} is not an array of numbers ({exc}); expected one real number per run") from exc
    if a.dtype.kind not in _REAL_KINDS:
        raise TypeError(
            f"actions must be real numbers (a float or integer array, a Python int or float, or a tensor), "
            f"got {action!r} of dtype {a.dtype}"
        )
    shapes = [(n,), (n, 1)] + ([()] if scalar_ok else [])
    if a.shape not in shapes:
        raise ValueError(f"expected one action value per run: shape {' or '.join(map(str, shapes))} for {n} run(s), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(
            f"action {a.tolist()} is not finite; actions must be finite numbers "
            "in [-1, 1] (values outside are clipped)"
        )
    # clip in the input's own dtype first: a huge float128 must not overflow to inf on the cast
    if a.dtype.kind == "f":
        a = np.clip(a, -1.0, 1.0)
    return np.clip(a.astype(np.float64), -1.0, 1.0).reshape(n)


class ActionMapping:
    """Maps actions of N runs to learning rates.

    Args:
        mode: ``"absolute"`` or ``"relative"``.
        relative_factor: f of relative mode, > 1.
    """

    def __init__(self, mode: str = "absolute", relative_factor: float = 2.0) -> None:
        if not (isinstance(mode, str) and mode in ACTION_MODES):
            raise ValueError(f"unknown action mode {mode!r}; choose one of {', '.join(ACTION_MODES)}")
        if not (is_real(relative_factor) and 1 < to_float(relative_factor) < np.inf):
            raise ValueError(f"relative_factor must be a finite number > 1, got {relative_factor!r}")
        self.mode = mode
        self.relative_factor = float(relative_factor)
        self.space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def to_lr(self, action: np.ndarray, current_lr: np.ndarray, lr_range: np.ndarray) -> np.ndarray:
        """Learning rates for actions ``(N, 1)`` (or ``(N,)``; ``()`` for one run), current LRs ``(N,)``, ranges ``(N, 2)``.

        Raises TypeError/ValueError for actions that break the rules of :func:`check_actions`.
        """
        a = check_actions(action, len(current_lr), scalar_ok=len(current_lr) == 1)
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
