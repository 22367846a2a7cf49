"""The task contract: a small, stateless description of an inner training problem.

A task says what to train (data, model, loss, metrics) and how by default (epoch budget,
batch size, optimizer, learning-rate range). It holds no training state: the engine
(:mod:`lrenv.engine`) owns every model, optimizer and random generator.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

#: ``schedulefree_*``: the ``schedulefree`` package's SGD and AdamW (see :mod:`lrenv.engine.optim`).
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "schedulefree_sgd", "schedulefree_adamw")


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
        momentum: Momentum of ``"momentum"`` and the Schedule-Free optimizers, ``beta1`` of Adam/AdamW.
        weight_decay: L2 penalty (SGD, Adam) or decoupled decay (AdamW).
        divergence_factor: A run counts as diverged when a loss is non-finite or exceeds
            ``divergence_factor`` times its initial value.
        target_loss: Validation loss that counts as "converged" (time-to-target reward,
            evaluation); ``None`` if the task defines none.
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
        object.__setattr__(self, "lr_range", tuple(float(v) for v in self.lr_range))
        low, high = self.lr_range
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if not (0 < low < high and math.isfinite(high)):
            raise ValueError(f"lr_range must be (low, high) with 0 < low < high < inf, got {self.lr_range!r}")
        if not low <= self.default_lr <= high:
            raise ValueError(f"default_lr {self.default_lr!r} must lie inside lr_range {self.lr_range!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not self.divergence_factor > 1:
            raise ValueError(f"divergence_factor must be > 1, got {self.divergence_factor!r}")

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
    unknown = sorted(set(overrides) - set(TaskConfig.field_names()))
    if unknown:
        raise TypeError(
            f"{what} got unknown setting(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(TaskConfig.field_names())}"
        )
    return dataclasses.replace(config, **overrides) if overrides else config


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
