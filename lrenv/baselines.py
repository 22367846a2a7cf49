"""The baselines: which classic schedules a learned Ψ is compared with, and how each is built.

:data:`BASELINES` describes each one (:mod:`lrenv.schedules` holds the schedules
themselves): its policy class, its second tuned parameter (if any) and the values that
parameter is tuned over, and whether it needs an optimizer other than the task's own.
:func:`make_policy` builds a baseline's policy for a task; the evaluation harness tunes them
(:mod:`lrenv.evaluation.tuning`).

The learning-rate-free reference, ``schedule_free``, changes the optimizer, not just the
schedule: its runs train with the Schedule-Free variant of the task's optimizer
(:func:`lrenv.engine.optim.schedule_free_variant`: Schedule-Free SGD for ``sgd`` and
``momentum`` tasks, Schedule-Free AdamW for ``adam`` and ``adamw`` ones, momentum = the
task's ``momentum``). Schedule-Free still takes a learning rate (tuned like every baseline's
peak LR); what it does without is the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

from lrenv.engine.optim import schedule_free_variant
from lrenv.schedules import (
    BoldDriver,
    Constant,
    Cosine,
    CosineHorizon,
    CosineWarmup,
    ExponentialDecay,
    OneCycle,
    Plateau,
    SchedulePolicy,
    StepDecay,
    WarmupConstant,
    WarmupStableDecay,
)
from lrenv.task import TaskConfig


@dataclass(frozen=True)
class Baseline:
    """How a baseline is built and tuned.

    Attributes:
        name: Its name in tables and on the command line.
        policy: Its policy class.
        second: Name of its second tuned parameter (``None``: the peak LR only).
        values: The values that parameter is tuned over.
        optimizer: ``None`` (the task's optimizer) or ``"schedulefree"``.
        torch: Its counterpart in ``torch.optim.lr_scheduler`` (documentation).
    """

    name: str
    policy: type[SchedulePolicy]
    second: str | None = None
    values: tuple[float, ...] = ()
    optimizer: str | None = None
    torch: str = ""


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline("constant", Constant, torch="ConstantLR(factor=1)"),
        Baseline("step", StepDecay, "gamma", (0.1, 0.3), torch="MultiStepLR(milestones=[T/2, 3T/4])"),
        Baseline("exponential", ExponentialDecay, "decay", (0.1, 0.01), torch="ExponentialLR(gamma=decay**(1/T))"),
        Baseline("cosine", Cosine, torch="CosineAnnealingLR(T_max=T)"),
        Baseline("cosine_warmup", CosineWarmup, "warmup", (0.05, 0.15), torch="SequentialLR(LinearLR, CosineAnnealingLR)"),
        Baseline("cosine_horizon", CosineHorizon, "horizon", (0.5, 0.75), torch="SequentialLR(CosineAnnealingLR(T_max=H), ConstantLR(0))"),
        Baseline("one_cycle", OneCycle, "pct_start", (0.15, 0.3), torch="OneCycleLR(cycle_momentum=False)"),
        Baseline("wsd", WarmupStableDecay, "decay_fraction", (0.2, 0.5), torch="SequentialLR(LinearLR, ConstantLR, LinearLR)"),
        Baseline("plateau", Plateau, "patience", (1, 3), torch="ReduceLROnPlateau(factor=0.3)"),
        Baseline("bold_driver", BoldDriver, torch="-"),
        Baseline("schedule_free", WarmupConstant, "warmup", (0.0, 0.1), optimizer="schedulefree", torch="- (schedulefree optimizers)"),
    )
}

def get_baseline(name: str) -> Baseline:
    """The :class:`Baseline` called ``name``; an unknown name lists the known ones."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    return BASELINES[name]


def make_policy(name: str, config: TaskConfig, *, features: str = "standard", **params: float) -> SchedulePolicy:
    """Baseline ``name`` for a task with that config, e.g. ``make_policy("cosine", task.config, lr=0.3)``."""
    baseline = get_baseline(name)
    return baseline.policy(config.epochs, config.lr_range, features=features, **params)


def baseline_optimizer(name: str, config: TaskConfig) -> str | None:
    """The optimizer baseline ``name`` trains with on a task with this config (``None``: the task's own)."""
    return schedule_free_variant(config.optimizer) if get_baseline(name).optimizer == "schedulefree" else None


__all__ = ["BASELINES", "Baseline", "baseline_optimizer", "get_baseline", "make_policy"]
