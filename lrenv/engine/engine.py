"""Engine: a population of runs of one task on one device, trained one epoch per call.

An :class:`Engine` holds a population of ``n_runs`` runs of one task on one device. Each
run has its own parameters, optimizer state, seed (initialisation and data order) and
learning rate; :mod:`lrenv.engine.trainers` trains them as a loop or as one stacked computation.
:meth:`Engine.run_epoch` trains every run for one epoch at the learning rates it is given
and returns :class:`EpochStats` with one host read for the whole population.

The hot path is plain tensors: all data lives on the device, each epoch's batches come
from one seeded ``randperm``, and batch losses are written into a device buffer that is
read once per epoch. No DataLoader, no per-batch ``.item()``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lrenv.engine.trainers import LoopTrainer, NotBatchable, StackedTrainer
from lrenv.task import Split, Task


@dataclass(frozen=True)
class EpochStats:
    """Numbers of one epoch for a population of runs: arrays of length N (float64 or bool).

    Attributes:
        train_loss: Mean of the mini-batch losses seen while training the epoch (for the
            initial evaluation at epoch 0: the loss of the untrained model on the train split).
        train_loss_std: Standard deviation of those mini-batch losses (0 at epoch 0).
        valid_loss: Loss on the validation split after the epoch.
        metrics: Validation metrics of the task, e.g. ``{"accuracy": ...}``.
        diverged: A loss is non-finite or exceeds ``divergence_factor`` times its initial value.
    """

    train_loss: np.ndarray
    train_loss_std: np.ndarray
    valid_loss: np.ndarray
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    diverged: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __len__(self) -> int:
        return len(self.valid_loss)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or ``"auto"`` picks CUDA when available, else CPU; anything else is checked."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use 'cpu' or 'auto'")
    return resolved


def run_seeds(seed: int) -> tuple[int, int]:
    """Independent seeds for a run's initialisation and its data order, from one run seed."""
    init_seed, order_seed = np.random.SeedSequence(int(seed)).generate_state(2, dtype=np.uint64)
    return int(init_seed >> np.uint64(1)), int(order_seed >> np.uint64(1))


class Engine:
    """Trains a population of runs of one task in lockstep, one epoch per call.

    Args:
        task: The inner task.
        n_runs: Population size N.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        dtype: Floating-point dtype of data and models.
        batched: Train the N runs as one stacked computation (``None``: when N > 1 and the
            model allows it; ``False``: always a loop of modules). A model that cannot be
            stacked (buffers such as BatchNorm, dropout, ops without a vmap rule such as
            ``nn.LSTM``) falls back to the loop with a one-line warning. A model that is a
            chain of Linear, Conv1d, Embedding, GRU and activation layers trains through a
            hand-written stacked backward (:mod:`lrenv.engine.stacked_layers`) on any device. Any
            other model with an ``nn.GRU`` is stacked through an unrolled stand-in
            (:mod:`lrenv.engine.stand_ins`) on CUDA or when ``batched=True``; on a CPU that is no
            faster than the fused module in a loop, so ``None`` loops there.

    Runs start untrained; call :meth:`reset` before :meth:`run_epoch`. Run k of a
    population trains exactly as run k alone with the matching torch optimizer.
    """

    def __init__(
        self,
        task: Task,
        n_runs: int = 1,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        batched: bool | None = None,
    ) -> None:
        if not isinstance(n_runs, int) or n_runs < 1:
            raise ValueError(f"n_runs must be a positive integer, got {n_runs!r}")
        self.task = task
        self.config = task.config
        self.n_runs = n_runs
        self.device = resolve_device(device)
        self.dtype = dtype
        data = task.data()
        self.train: Split = data.train.to(self.device, dtype)
        self.valid: Split = data.valid.to(self.device, dtype)
        self.test: Split | None = data.test.to(self.device, dtype) if data.test is not None else None
        self.batches_per_epoch = -(-len(self.train) // self.config.batch_size)
        self._orders: list[torch.Generator | None] = [None] * n_runs
        self._first_train = np.full(n_runs, np.nan)
        self._first_valid = np.full(n_runs, np.nan)
        self._metric_names: tuple[str, ...] | None = None
        self.trainer, self.fallback_reason = self._pick_trainer(batched)

    @property
    def batched(self) -> bool:
        """Whether the runs train as one stacked computation."""
        return isinstance(self.trainer, StackedTrainer)

    def _pick_trainer(self, batched: bool | None) -> tuple[LoopTrainer | StackedTrainer, str | None]:
        if batched is False or (batched is None and self.n_runs == 1):
            return LoopTrainer(self.task, self.n_runs), None
        try:
            # a GRU outside a chain vmaps only unrolled: that pays on a GPU; on a CPU the fused module in a loop is as fast
            unroll = batched is True or self.device.type == "cuda"
            return StackedTrainer(self.task, self.n_runs, self._new_model(0), self.train, unroll_recurrent=unroll), None
        except NotBatchable as exc:
            reason = str(exc)
        warnings.warn(
            f"lrenv: task {self.task.name or type(self.task).__name__} cannot be batched ({reason}); training its {self.n_runs} runs in a loop",
            stacklevel=3,
        )
        return LoopTrainer(self.task, self.n_runs), reason

    def _new_model(self, init_seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # module constructors draw from the global RNG
            model = self.task.model(torch.Generator().manual_seed(init_seed))
        return model.to(device=self.device, dtype=self.dtype)

    # -- public API ------------------------------------------------------------------------

    def reset(self, seeds: Sequence[int], runs: Sequence[int] | None = None) -> EpochStats:
        """(Re)initialise runs from seeds and evaluate them untrained (epoch 0).

        Args:
            seeds: One seed per run; it fixes the run's initialisation and data order.
            runs: Indices of the runs to reset; all runs by default.

        Returns:
            The epoch-0 stats of the reset runs, in the order of ``runs``.
        """
        runs = list(range(self.n_runs)) if runs is None else [int(k) for k in runs]
        if len(seeds) != len(runs):
            raise ValueError(f"got {len(seeds)} seeds for {len(runs)} runs")
        models = []
        for k, seed in zip(runs, seeds):
            if not 0 <= k < self.n_runs:
                raise IndexError(f"run index {k} out of range for a population of {self.n_runs}")
            init_seed, order_seed = run_seeds(seed)
            models.append(self._new_model(init_seed))
            self._orders[k] = torch.Generator(device=self.device).manual_seed(order_seed)
        self.trainer.init_runs(runs, models)
        self._metric_names, train_table = self.trainer.evaluate(self.train, runs)
        _, valid_table = self.trainer.evaluate(self.valid, runs)
        train_table, valid_table = _to_host(train_table, valid_table)
        stats = self._stats(train_table[:, 0], np.zeros(len(runs)), valid_table)
        self._first_train[runs] = stats.train_loss
        self._first_valid[runs] = stats.valid_loss
        return self._mark_divergence(stats, runs)

    def run_epoch(self, lrs: Sequence[float] | np.ndarray) -> EpochStats:
        """Train every run one epoch, run k at learning rate ``lrs[k]``; evaluate on validation.

        Returns:
            Stats of all N runs (one host read). A diverged run is reported, never raised.
        """
        lrs = np.asarray(lrs, dtype=np.float64).reshape(-1)
        if len(lrs) != self.n_runs:
            raise ValueError(f"got {len(lrs)} learning rates for {self.n_runs} runs")
        if not np.all(np.isfinite(lrs)) or np.any(lrs < 0):
            raise ValueError(f"learning rates must be finite and >= 0, got {lrs}")
        perms = torch.stack([torch.randperm(len(self.train), generator=self._order(k), device=self.device) for k in range(self.n_runs)])
        batch_losses = torch.empty(self.n_runs, self.batches_per_epoch, device=self.device, dtype=self.dtype)
        with torch.enable_grad():  # callers may step an env under no_grad (SB3's ARS evaluates candidates so)
            self.trainer.train_epoch(lrs, perms, self.train, batch_losses)
        runs = range(self.n_runs)
        _, valid_table = self.trainer.evaluate(self.valid, runs)
        # mean and spread of the batch losses travel in the same host read as validation
        spread = batch_losses.std(1) if self.batches_per_epoch > 1 else torch.zeros_like(batch_losses[:, 0])
        summary, valid_table = _to_host(torch.stack([batch_losses.mean(1), spread], 1), valid_table)
        return self._mark_divergence(self._stats(summary[:, 0], summary[:, 1], valid_table), runs)

    def evaluate(self, split: str = "valid") -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Loss and metrics of every run's current model on ``"train"``, ``"valid"`` or ``"test"``.

        Returns:
            ``(loss[N], {metric: values[N]})``.
        """
        splits = {"train": self.train, "valid": self.valid, "test": self.test}
        data = splits.get(split)
        if data is None:
            have = [name for name, s in splits.items() if s is not None]
            raise ValueError(f"unknown split {split!r} for task {self.task.name!r}; it has {', '.join(have)}")
        self._order(0)
        names, table = self.trainer.evaluate(data, range(self.n_runs))
        (table,) = _to_host(table)
        return table[:, 0], {name: table[:, 1 + i] for i, name in enumerate(names)}

    def model(self, run: int = 0) -> nn.Module:
        """Run k's model: the live module (loop) or a copy of its parameters (batched)."""
        self._order(run)
        return self.trainer.model(run)

    # -- snapshots -------------------------------------------------------------------------

    def run_state(self, run: int) -> dict[str, Any]:
        """A copy of run k's whole training state: parameters, optimizer state, data order, epoch-0 losses.

        The copy is independent of the engine (later epochs do not change it) and holds only
        tensors, numbers and strings, so ``torch.save`` / ``torch.load(weights_only=True)`` keep it.
        """
        order = self._order(run)
        return {
            "trainer": self._trainer_kind,
            "state": self.trainer.run_state(run),
            "order": order.get_state(),
            "first_train": float(self._first_train[run]),
            "first_valid": float(self._first_valid[run]),
        }

    def load_run_state(self, runs: Sequence[int], state: dict[str, Any], seeds: Sequence[int] | None = None) -> None:
        """Make each of ``runs`` continue from one run's state (:meth:`run_state`): branch a run.

        Args:
            runs: Indices of the runs that take the state.
            state: A run's state, from this engine or another one of the same task and trainer
                kind (loop or stacked: :attr:`batched`).
            seeds: One seed per run for a fresh data order from here on (how branches of one
                state differ in their noise); ``None``: each continues the state's own order.
        """
        runs = [int(k) for k in runs]
        for k in runs:
            if not 0 <= k < self.n_runs:
                raise IndexError(f"run index {k} out of range for a population of {self.n_runs}")
        if state.get("trainer") != self._trainer_kind:
            raise ValueError(
                f"a run state of a {state.get('trainer')!r} trainer cannot be loaded into this engine's {self._trainer_kind!r} one; "
                f"build both engines with the same batched= setting"
            )
        if seeds is not None and len(seeds) != len(runs):
            raise ValueError(f"got {len(seeds)} seeds for {len(runs)} runs")
        fresh = [k for k in runs if self._orders[k] is None]
        if fresh:  # a run that was never reset has no module or optimizer to load into yet
            self.trainer.init_runs(fresh, [self._new_model(0) for _ in fresh])
        self.trainer.load_run_state(runs, state["state"])
        for i, k in enumerate(runs):
            order = torch.Generator(device=self.device)
            if seeds is None:
                order.set_state(state["order"])
            else:
                order.manual_seed(run_seeds(int(seeds[i]))[1])
            self._orders[k] = order
        self._first_train[runs] = state["first_train"]
        self._first_valid[runs] = state["first_valid"]
        if runs and self._metric_names is None:
            self._metric_names, _ = self.trainer.evaluate(self.valid, runs[:1])

    def state_dict(self) -> dict[str, Any]:
        """The state of every run (:meth:`run_state`), to restore with :meth:`load_state_dict`."""
        return {"n_runs": self.n_runs, "runs": [self.run_state(k) for k in range(self.n_runs)]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore every run from :meth:`state_dict` of an engine of the same task, size and trainer kind."""
        if state_dict.get("n_runs") != self.n_runs:
            raise ValueError(f"the state holds {state_dict.get('n_runs')} runs, this engine has {self.n_runs}")
        for k, state in enumerate(state_dict["runs"]):
            self.load_run_state([k], state)

    @property
    def _trainer_kind(self) -> str:
        return "stacked" if self.batched else "loop"

    # -- internals -------------------------------------------------------------------------

    def _order(self, k: int) -> torch.Generator:
        order = self._orders[k]
        if order is None:
            raise RuntimeError(f"run {k} has not been initialised; call Engine.reset(seeds) first")
        return order

    def _stats(self, train_loss: np.ndarray, train_std: np.ndarray, valid_table: np.ndarray) -> EpochStats:
        metrics = {name: valid_table[:, 1 + i] for i, name in enumerate(self._metric_names)}
        n = len(valid_table)
        return EpochStats(train_loss, np.nan_to_num(train_std), valid_table[:, 0], metrics, np.zeros(n, bool))

    def _mark_divergence(self, stats: EpochStats, runs: Sequence[int]) -> EpochStats:
        idx = np.asarray(list(runs), dtype=np.int64)
        factor = self.config.divergence_factor
        with np.errstate(invalid="ignore"):
            diverged = (
                ~np.isfinite(stats.train_loss)
                | ~np.isfinite(stats.valid_loss)
                | (stats.train_loss > factor * np.abs(self._first_train[idx]))
                | (stats.valid_loss > factor * np.abs(self._first_valid[idx]))
            )
        return EpochStats(stats.train_loss, stats.train_loss_std, stats.valid_loss, stats.metrics, diverged)


def _to_host(*tables: torch.Tensor) -> list[np.ndarray]:
    """Copy device tables ``[N, k_i]`` to the host in one read."""
    widths = [t.shape[1] for t in tables]
    joined = torch.cat([t.to(torch.float64) for t in tables], 1).cpu().numpy()
    return list(np.split(joined, np.cumsum(widths)[:-1], axis=1))
