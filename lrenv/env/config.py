"""EnvConfig: every setting of an lrenv environment, with its default, check and serialisation.

:class:`~lrenv.env.env.LREnv`, :class:`~lrenv.env.vec_env.BatchedVecEnv`, the evaluation
harness, :func:`lrenv.load_policy` and ``agents.train`` all take their env settings from
this one dataclass, so a setting is defined, checked and written to ``config.json`` in one
place. What is not a setting of the env stays an argument of its owner: the task, the seed,
the render mode, the number of envs.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lrenv.env.actions import ActionMapping
from lrenv.env.features import FEATURE_SETS
from lrenv.env.rewards import get_reward
from lrenv.task import check_overrides, is_real, to_float

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class EnvConfig:
    """The settings of an lrenv environment (see :class:`lrenv.LREnv` for their meaning).

    Attributes:
        features: ``"standard"`` or ``"minimal"`` (:mod:`lrenv.env.features`).
        action_mode: ``"absolute"``, ``"relative"`` or ``"multiplier"`` (:mod:`lrenv.env.actions`).
        relative_factor: f of relative and multiplier modes, > 1.
        base_shape: ``"constant"`` or ``"cosine"``: the base LR's shape over the budget that
            multiplier actions scale (:mod:`lrenv.env.actions`).
        base_lr_spread: s >= 1. Each episode starts from (and, in multiplier mode, scales)
            the base LR ``default_lr * s ** u``, u uniform in [-1, 1] and drawn from the run
            seed: training on mis-set base LRs, up to s times off either way. 1: the task's
            ``default_lr`` (evaluation always uses 1).
        reward: ``"log_progress"``, ``"final_loss"`` or ``"time_to_target"``.
        divergence_penalty: Return of a diverged episode is ``-divergence_penalty``; > 0.
        target_loss: Target validation loss of ``"time_to_target"`` (``None``: each task's).
        task_config: :class:`lrenv.TaskConfig` overrides applied to every task, e.g.
            ``{"epochs": 10}`` (``None``: none).
        dtype: ``"float32"`` or ``"float64"`` for the inner model and data.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.

    Invalid values, wrong types included (``relative_factor="2"``, ``features=["standard"]``,
    a bool for a number), raise ``ValueError`` (``TypeError`` for an unknown ``task_config``
    key) on construction, naming the setting and what is allowed. ``task_config`` values are
    checked field by field here, and against each task's config when the task is built.
    """

    features: str = "standard"
    action_mode: str = "absolute"
    relative_factor: float = 2.0
    base_shape: str = "constant"
    base_lr_spread: float = 1.0
    reward: str = "log_progress"
    divergence_penalty: float = 2.0
    target_loss: float | None = None
    task_config: dict[str, Any] | None = None
    dtype: str = "float32"
    device: str = "auto"

    def __post_init__(self) -> None:
        if not (isinstance(self.features, str) and self.features in FEATURE_SETS):
            raise ValueError(f"unknown feature set {self.features!r}; choose one of {', '.join(FEATURE_SETS)}")
        ActionMapping(self.action_mode, self.relative_factor, self.base_shape)  # checks all three
        object.__setattr__(self, "relative_factor", float(self.relative_factor))
        if not (is_real(self.base_lr_spread) and 1 <= to_float(self.base_lr_spread) < math.inf):
            raise ValueError(f"base_lr_spread must be a finite number >= 1, got {self.base_lr_spread!r}")
        object.__setattr__(self, "base_lr_spread", float(self.base_lr_spread))
        get_reward(self.reward)
        if not (is_real(self.divergence_penalty) and 0 < to_float(self.divergence_penalty) < math.inf):
            raise ValueError(f"divergence_penalty must be a finite number > 0, got {self.divergence_penalty!r}")
        object.__setattr__(self, "divergence_penalty", float(self.divergence_penalty))
        if self.target_loss is not None:
            if not (is_real(self.target_loss) and math.isfinite(to_float(self.target_loss))):
                raise ValueError(f"target_loss must be None or a finite number, got {self.target_loss!r}")
            object.__setattr__(self, "target_loss", float(self.target_loss))
        object.__setattr__(self, "task_config", _task_overrides(self.task_config))
        if not (isinstance(self.dtype, str) and self.dtype in DTYPES):
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        object.__setattr__(self, "device", _device_name(self.device))

    def __hash__(self) -> int:  # task_config is a dict: hash the serialised form
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_kwargs(
        cls, settings: Mapping[str, Any], *, base: EnvConfig | None = None, owner: str = "EnvConfig", other_arguments: Iterable[str] = ()
    ) -> EnvConfig:
        """``base`` (default: the defaults) with ``settings`` applied.

        Args:
            settings: Setting name -> value.
            base: The config to start from.
            owner: Who received the settings, for the error message (e.g. ``"LREnv"``).
            other_arguments: The owner's own arguments, listed as allowed in that message.

        Raises:
            TypeError: A key is not a setting; the message lists the allowed ones.
        """
        unknown = sorted(str(k) for k in settings if k not in cls.field_names())
        if unknown:
            allowed = [*other_arguments, *cls.field_names()]
            raise TypeError(f"{owner} got unknown keyword argument(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
        if base is not None and not isinstance(base, EnvConfig):
            raise TypeError(f"{owner}: config must be an lrenv.EnvConfig or None, got {base!r}")
        return dataclasses.replace(base or cls(), **settings)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str = "the env settings") -> EnvConfig:
        """An EnvConfig from :meth:`to_dict` output (missing keys take their defaults).

        Raises:
            ValueError: ``data`` is not a mapping, has an unknown key or an invalid value;
                the message names ``source`` (e.g. a ``config.json`` path).
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: the env settings must be a mapping of {', '.join(cls.field_names())}, got {data!r}")
        try:
            return cls.from_kwargs(data, owner=source)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from exc

    def replace(self, **changes: Any) -> EnvConfig:
        """A copy with some settings changed (checked like the constructor's)."""
        return self.from_kwargs(changes, base=self, owner="EnvConfig.replace")

    # -- use -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible values, as written into a run's ``config.json``."""
        out = dataclasses.asdict(self)
        if self.task_config is not None:
            out["task_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.task_config.items()}
        return out

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def action_mapping(self) -> ActionMapping:
        return ActionMapping(self.action_mode, self.relative_factor, self.base_shape)

    @property
    def task_overrides(self) -> dict[str, Any]:
        """``task_config`` as keyword arguments of :func:`lrenv.make_task` (empty without overrides)."""
        return dict(self.task_config or {})


def _task_overrides(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"task_config must be None or a mapping of TaskConfig fields, got {value!r}")
    # normalised values (plain ints, floats, tuples) keep config.json writable and comparable
    return check_overrides(value, "task_config", "setting")


def _device_name(device: Any) -> str:
    """The device as a string; its availability is checked when an engine is built on it."""
    if not isinstance(device, (str, torch.device, type(None))):  # an int means a CUDA index, on some machines only
        raise ValueError(f"invalid device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device is None or device == "auto":
        return "auto"
    try:
        name = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if name.type not in ("cpu", "cuda"):  # 'meta', 'mps', ... parse, then fail deep inside torch
        raise ValueError(f"unsupported device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return str(name)
