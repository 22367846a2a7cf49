"""The task contract: a small, stateless description of an inner training problem.

A task says what to train (data, model, loss, metrics) and how by default (epoch budget,
batch size, optimizer, learning-rate range). It holds no training state: the engine
(:mod:`lrenv.engine`) owns every model, optimizer and random generator.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

#: ``schedulefree_*``: the ``schedulefree`` package's SGD and AdamW (see :mod:`lrenv.engine.optim`).
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "schedulefree_sgd", "schedulefree_adamw")
#: The schedulefree package divides by momentum (beta1): 0 fails and a tiny one overflows float32.
SCHEDULEFREE_MIN_MOMENTUM = 1e-6


def is_real(value: object) -> bool:
    """A real number (Python or numpy) that is not a bool: ``True`` is an int, never a setting's number."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def to_float(value: Any) -> float:
    """A real number as a float; an int too large for a float is ±inf (``float()`` would raise)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def check_positive_int(value: object, what: str) -> int:
    """``value`` as an int in [1, 2**63) (numpy integers too); bools, floats and strings are a ValueError.

    The bound is numpy's int64, in which the env keeps epoch counts and budgets.
    """
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and 1 <= value < 2**63):
        raise ValueError(f"{what} must be a positive integer (below 2**63), got {value!r}")
    return int(value)


def check_lr_range(value: object, what: str = "lr_range") -> tuple[float, float]:
    """``value`` as ``(low, high)`` floats with 0 < low < high < inf and a finite high / low.

    The ratio must be finite because absolute actions map onto ``low * (high / low) ** t``.
    """
    message = f"{what} must be (low, high) with 0 < low < high < inf and high / low < inf, got {value!r}"
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):  # not a set, dict, ...
        raise ValueError(message)
    values = tuple(value)
    if len(values) != 2 or not all(is_real(v) for v in values):
        raise ValueError(message)
    low, high = (to_float(v) for v in values)
    if not (0 < low < high and math.isfinite(high) and math.isfinite(high / low)):
        raise ValueError(message)
    return low, high


def _real(what: str, allowed: str, ok: Callable[[float], bool]) -> Callable[[object], float]:
    def check(value: object) -> float:
        if not (is_real(value) and ok(to_float(value))):
            raise ValueError(f"{what} must be {allowed}, got {value!r}")
        return to_float(value)

    return check


def _optimizer(value: object) -> str:
    if not (isinstance(value, str) and value in OPTIMIZERS):
        raise ValueError(f"unknown optimizer {value!r}; choose one of {', '.join(OPTIMIZERS)}")
    return value


def _target_loss(value: object) -> float | None:
    if value is None:
        return None
    if not (is_real(value) and math.isfinite(to_float(value))):
        raise ValueError(f"target_loss must be None or a finite number, got {value!r}")
    return to_float(value)


#: Per-field checks of TaskConfig: each returns the normalised value or raises ValueError.
#: ``default_lr`` is checked against ``lr_range`` too, when both are known.
_FIELD_CHECKS: dict[str, Callable[[Any], Any]] = {
    "epochs": lambda v: check_positive_int(v, "epochs"),
    "batch_size": lambda v: check_positive_int(v, "batch_size"),
    "optimizer": _optimizer,
    "lr_range": check_lr_range,
    "default_lr": _real("default_lr", "a finite number > 0 inside lr_range", lambda v: 0 < v < math.inf),
    "momentum": _real("momentum", "a number in [0, 1)", lambda v: 0 <= v < 1),
    "weight_decay": _real("weight_decay", "a finite number >= 0", lambda v: 0 <= v < math.inf),
    "divergence_factor": _real("divergence_factor", "a number > 1 (inf: only non-finite losses diverge)", lambda v: v > 1),
    "target_loss": _target_loss,
}


@dataclass(frozen=True)
class TaskConfig:
    """How a task is trained by default. Every field can be overridden per task instance.

    Attributes:
        epochs: Epoch budget of one inner run (= steps of one env episode).
        batch_size: Mini-batch size.
        optimizer: One of ``"sgd"``, ``"momentum"`` (SGD with momentum), ``"adam"``, ``"adamw"``,
            ``"schedulefree_sgd"``, ``"schedulefree_adamw"`` (Schedule-Free SGD with momentum
            and AdamW).
        lr_range: ``(low, high)`` learning rates the action maps onto, log-uniformly.
        default_lr: A constant learning rate that trains reasonably; the starting LR of
            relative action mode and the plain baseline.
        momentum: Momentum of ``"momentum"`` and the Schedule-Free optimizers (there at least
            1e-6), ``beta1`` of Adam/AdamW.
        weight_decay: L2 penalty (SGD, Adam) or decoupled decay (AdamW).
        divergence_factor: A run counts as diverged when a loss is non-finite or exceeds
            ``divergence_factor`` times its initial value.
        target_loss: Validation loss that counts as "converged" (time-to-target reward,
            evaluation); ``None`` if the task defines none.

    An invalid value (a wrong type included: ``epochs=True``, ``epochs="3"``, a NaN in
    ``lr_range``) raises ``ValueError`` naming the field and what is allowed.
    """

    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "momentum"
    lr_range: tuple[float, float] = (1e-4, 1.0)
    default_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    divergence_factor: float = 10.0
    target_loss: float | None = None

    def __post_init__(self) -> None:
        # values are normalised to plain int/float/tuple (numpy numbers too), so configs compare
        # equal and serialise to JSON whatever number types they were built from
        for name, check in _FIELD_CHECKS.items():
            object.__setattr__(self, name, check(getattr(self, name)))
        low, high = self.lr_range
        if not low <= self.default_lr <= high:
            raise ValueError(f"default_lr {self.default_lr!r} must lie inside lr_range {self.lr_range!r}")
        if self.optimizer.startswith("schedulefree_") and self.momentum < SCHEDULEFREE_MIN_MOMENTUM:
            raise ValueError(f"momentum must be in [{SCHEDULEFREE_MIN_MOMENTUM:g}, 1) for {self.optimizer}, got {self.momentum!r}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


@dataclass(frozen=True)
class Split:
    """Inputs and targets of one data split, as tensors (first dimension = samples)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} samples but y has {len(self.y)}")
        if len(self.x) == 0:
            raise ValueError("a data split must hold at least one sample")

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Split:
        """Move to ``device``; floating-point tensors are cast to ``dtype`` when given."""

        def move(t: torch.Tensor) -> torch.Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return Split(move(self.x), move(self.y))


@dataclass(frozen=True)
class TaskData:
    """The data of a task: train and validation splits, and a test split where it has one."""

    train: Split
    valid: Split
    test: Split | None = None


class Task(abc.ABC):
    """Base class of inner tasks.

    Subclasses set :attr:`default_config` and implement :meth:`data`, :meth:`model` and
    :meth:`loss`; classifiers also override :meth:`metrics`. Create instances with
    :func:`lrenv.make_task` so registered defaults and overrides apply.

    Args:
        config: Full configuration; defaults to the class's :attr:`default_config`.
        **overrides: Fields of :class:`TaskConfig` to change.
    """

    name: str = ""
    default_config: ClassVar[TaskConfig] = TaskConfig()

    def __init__(self, config: TaskConfig | None = None, **overrides: object) -> None:
        self.config = with_overrides(config or self.default_config, overrides, what=type(self).__name__)

    @abc.abstractmethod
    def data(self) -> TaskData:
        """Return the task's data. Must not touch the network; may cache what it generates.

        The returned tensors may be shared between calls (cached): treat them as read-only.
        """

    @abc.abstractmethod
    def model(self, generator: torch.Generator) -> nn.Module:
        """Return a fresh model whose initialisation draws only from ``generator``."""

    @abc.abstractmethod
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch, a scalar tensor."""

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batch-mean metrics besides the loss (e.g. ``{"accuracy": ...}``); none by default."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, config={self.config})"


def with_overrides(config: TaskConfig, overrides: dict[str, object], what: str = "task") -> TaskConfig:
    """Return ``config`` with ``overrides`` applied; unknown fields are a clear error."""
    if not isinstance(config, TaskConfig):
        raise TypeError(f"{what}: config must be an lrenv.TaskConfig, got {config!r}")
    overrides = check_overrides(overrides, what, "setting")
    return dataclasses.replace(config, **overrides) if overrides else config


def check_overrides(overrides: Mapping[str, object], what: str = "task", kind: str = "setting") -> dict[str, object]:
    """Check TaskConfig overrides field by field, before any task config is known.

    Raises:
        TypeError: A key is not a TaskConfig field (the message lists the allowed ones).
        ValueError: A value is invalid for its field, whatever the task (``default_lr``
            against ``lr_range`` is checked when the overrides are applied); the message
            starts with ``what``.
    """
    fields = TaskConfig.field_names()
    unknown = sorted(str(k) for k in overrides if k not in fields)
    if unknown:
        raise TypeError(f"{what} got unknown {kind}(s) {', '.join(unknown)}; allowed: {', '.join(fields)}")
    checked = {}
    for k, v in overrides.items():
        try:
            checked[k] = _FIELD_CHECKS[k](v)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None  # the field's message, with whose setting it is
    return checked


def classification_metrics(output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Accuracy of logits ``output`` against integer class ``target`` (helper for tasks)."""
    return {"accuracy": (output.argmax(-1) == target).to(output.dtype).mean()}


class ClassificationTask(Task):
    """Base of classifiers: cross-entropy loss and accuracy on logits (last dim = classes).

    Works for per-position targets too (output ``(B, L, C)``, target ``(B, L)``): both
    are averaged over every position. A subclass that keeps this :meth:`loss` gets a
    faster loss in batched training (one flat cross-entropy for all runs, no ``vmap``).
    """

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return classification_metrics(output, target)
