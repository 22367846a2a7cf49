"""The engine: the one place that trains inner models, N runs of one task at a time.

``engine`` (:class:`Engine`: data on the device, seeds, one host read per epoch) trains
through ``trainers`` (a loop of modules, or one stacked computation), whose stacked
gradients come from ``stacked_layers`` (hand-written chains) or ``vmap`` over ``stand_ins``,
and whose updates come from ``optim`` (torch optimizers per run, or stacked ones).
"""

from lrenv.engine.engine import Engine, EpochStats, resolve_device, run_seeds

__all__ = ["Engine", "EpochStats", "resolve_device", "run_seeds"]
