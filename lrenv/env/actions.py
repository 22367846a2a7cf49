"""Actions: a number in [-1, 1] -> the learning rate of the next epoch.

``"absolute"`` maps the action log-uniformly onto the task's LR range:
``lr = low * (high / low) ** ((a + 1) / 2)``. ``"relative"`` multiplies the current LR by a
factor in ``[1/f, f]``: ``lr = clip(lr_prev * f ** a, low, high)``. ``"multiplier"`` scales
the episode's base LR (the LR it started from: the task's ``default_lr`` in the env, the
optimizer's LR in a scheduler), shaped by ``base_shape`` over the budget, by a factor in
``[1/f, f]``: ``lr = clip(base * shape(i / T) * f ** a, max(low, base / f), min(high, base * f))``
with ``shape`` 1 (``"constant"``) or ``(1 + cos(pi i / T)) / 2`` (``"cosine"``), i the epoch
about to be trained and T the budget. Multiplier mode takes the LR's *scale* from the user and
only its *shape* from the policy: the same observations give LRs proportional to the base LR.
With a cosine base shape the policy's action 0 is cosine decay from the base LR, and what it
learns is the correction to that.

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

ACTION_MODES = ("absolute", "relative", "multiplier")
#: Shapes of the base LR over the budget that multiplier actions scale: progress i/T -> factor.
BASE_SHAPES = {
    "constant": lambda p: np.ones_like(p),
    "cosine": lambda p: 0.5 * (1.0 + np.cos(np.pi * np.clip(p, 0.0, 1.0))),
}
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
        mode: ``"absolute"``, ``"relative"`` or ``"multiplier"``.
        relative_factor: f of relative and multiplier modes, > 1.
        base_shape: ``"constant"`` or ``"cosine"``: the base LR's shape in multiplier mode.
    """

    def __init__(self, mode: str = "absolute", relative_factor: float = 2.0, base_shape: str = "constant") -> None:
        if not (isinstance(mode, str) and mode in ACTION_MODES):
            raise ValueError(f"unknown action mode {mode!r}; choose one of {', '.join(ACTION_MODES)}")
        if not (is_real(relative_factor) and 1 < to_float(relative_factor) < np.inf):
            raise ValueError(f"relative_factor must be a finite number > 1, got {relative_factor!r}")
        if not (isinstance(base_shape, str) and base_shape in BASE_SHAPES):
            raise ValueError(f"unknown base_shape {base_shape!r}; choose one of {', '.join(BASE_SHAPES)}")
        self.mode = mode
        self.relative_factor = float(relative_factor)
        self.base_shape = base_shape
        self.space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def to_lr(
        self,
        action: np.ndarray,
        current_lr: np.ndarray,
        lr_range: np.ndarray,
        base_lr: np.ndarray | None = None,
        progress: np.ndarray | None = None,
    ) -> np.ndarray:
        """Learning rates for actions ``(N, 1)`` (or ``(N,)``; ``()`` for one run).

        Args:
            action: The actions.
            current_lr: LRs of the epoch just trained, ``(N,)`` (relative mode multiplies them).
            lr_range: ``(N, 2)`` low and high LR the result is clipped to.
            base_lr: The episodes' base LRs, ``(N,)``; multiplier mode needs them.
            progress: i / T of the epoch about to be trained, ``(N,)``; multiplier mode needs it.

        Raises TypeError/ValueError for actions that break the rules of :func:`check_actions`.
        """
        a = check_actions(action, len(current_lr), scalar_ok=len(current_lr) == 1)
        low, high = np.asarray(lr_range, dtype=np.float64).T
        if self.mode == "absolute":
            return low * (high / low) ** ((a + 1.0) / 2.0)
        if self.mode == "relative":
            return np.clip(np.asarray(current_lr, dtype=np.float64) * self.relative_factor**a, low, high)
        base, shaped = self._shaped_base(base_lr, progress)
        f = self.relative_factor
        return np.clip(shaped * f**a, np.maximum(low, base / f), np.minimum(high, base * f))

    def to_action(
        self,
        lr: np.ndarray,
        current_lr: np.ndarray,
        lr_range: np.ndarray,
        base_lr: np.ndarray | None = None,
        progress: np.ndarray | None = None,
    ) -> np.ndarray:
        """The action that asks for ``lr`` (inverse of :meth:`to_lr`, clipped to [-1, 1]); ``(N, 1)``."""
        lr = np.asarray(lr, dtype=np.float64).reshape(-1)
        low, high = np.asarray(lr_range, dtype=np.float64).T
        if self.mode == "absolute":
            a = 2.0 * np.log(lr / low) / np.log(high / low) - 1.0
        elif self.mode == "relative":
            a = np.log(lr / np.asarray(current_lr, dtype=np.float64)) / np.log(self.relative_factor)
        else:
            with np.errstate(divide="ignore"):
                a = np.log(lr / self._shaped_base(base_lr, progress)[1]) / np.log(self.relative_factor)
        return np.clip(a, -1.0, 1.0).astype(np.float32).reshape(-1, 1)

    def _shaped_base(self, base_lr: np.ndarray | None, progress: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """``(base, base * shape(progress))`` of multiplier mode."""
        if base_lr is None or progress is None:
            raise ValueError("multiplier action mode needs the episodes' base LRs (base_lr) and progress i/T (progress)")
        base = np.asarray(base_lr, dtype=np.float64)
        return base, base * BASE_SHAPES[self.base_shape](np.asarray(progress, dtype=np.float64))
