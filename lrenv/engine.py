"""The engine: the one place that trains inner models.

An :class:`Engine` holds a population of ``n_runs`` runs of one task on one device. Each
run has its own model, optimizer, seed (initialisation and data order) and learning rate.
:meth:`Engine.run_epoch` trains every run for one epoch at the learning rates it is given
and returns :class:`EpochStats` with one host read for the whole population.

The hot path is plain tensors: all data lives on the device, each epoch's batches come
from one seeded ``randperm``, and batch losses are written into a device buffer that is
read once per epoch. No DataLoader, no per-batch ``.item()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lrenv.task import Split, Task, TaskConfig

#: Samples per forward pass when evaluating a split (memory bound, not a training setting).
EVAL_CHUNK = 4096


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

    def select(self, runs: Sequence[int] | np.ndarray) -> EpochStats:
        """The stats of the given runs only."""
        idx = np.asarray(runs, dtype=np.int64)
        return EpochStats(
            self.train_loss[idx],
            self.train_loss_std[idx],
            self.valid_loss[idx],
            {k: v[idx] for k, v in self.metrics.items()},
            self.diverged[idx],
        )


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


def make_optimizer(params: list[nn.Parameter], config: TaskConfig, lr: float) -> torch.optim.Optimizer:
    """The torch optimizer a task's config names, with its momentum and weight decay."""
    name, beta1, wd = config.optimizer, config.momentum, config.weight_decay
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=beta1, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(beta1, 0.999), weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r}")  # TaskConfig validates; kept for safety


def run_seeds(seed: int) -> tuple[int, int]:
    """Independent seeds for a run's initialisation and its data order, from one run seed."""
    init_seed, order_seed = np.random.SeedSequence(int(seed)).generate_state(2, dtype=np.uint64)
    return int(init_seed >> np.uint64(1)), int(order_seed >> np.uint64(1))


@dataclass
class _Run:
    """Training state of one run: everything the task does not hold."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    order: torch.Generator
    first_train: float = float("nan")
    first_valid: float = float("nan")


class Engine:
    """Trains a population of runs of one task in lockstep, one epoch per call.

    Args:
        task: The inner task.
        n_runs: Population size N.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        dtype: Floating-point dtype of data and models.

    Runs start untrained; call :meth:`reset` before :meth:`run_epoch`.
    """

    def __init__(
        self,
        task: Task,
        n_runs: int = 1,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
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
        self._runs: list[_Run | None] = [None] * n_runs
        self._metric_names: tuple[str, ...] = ()  # learned from the first evaluation

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
        for k, seed in zip(runs, seeds):
            if not 0 <= k < self.n_runs:
                raise IndexError(f"run index {k} out of range for a population of {self.n_runs}")
            init_seed, order_seed = run_seeds(seed)
            with torch.random.fork_rng(devices=[]):  # module constructors draw from the global RNG
                model = self.task.model(torch.Generator().manual_seed(init_seed))
            model = model.to(device=self.device, dtype=self.dtype)
            optimizer = make_optimizer(list(model.parameters()), self.config, self.config.default_lr)
            order = torch.Generator(device=self.device).manual_seed(order_seed)
            self._runs[k] = _Run(model, optimizer, order)
        train_rows = [self._evaluate(self._get(k).model, self.train) for k in runs]
        valid_rows = [self._evaluate(self._get(k).model, self.valid) for k in runs]
        train_table, valid_table = self._read_tables(train_rows, valid_rows)
        n = len(runs)
        stats = self._stats(train_table[:, 0], np.zeros(n), valid_table)
        for i, k in enumerate(runs):
            run = self._get(k)
            run.first_train = float(stats.train_loss[i])
            run.first_valid = float(stats.valid_loss[i])
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
        batch_losses = torch.empty(self.n_runs, self.batches_per_epoch, device=self.device, dtype=self.dtype)
        valid_rows = []
        for k in range(self.n_runs):
            run = self._get(k)
            self._train_epoch(run, float(lrs[k]), batch_losses[k])
            valid_rows.append(self._evaluate(run.model, self.valid))
        # mean and spread of the batch losses travel in the same host read as validation
        spread = batch_losses.std(1) if self.batches_per_epoch > 1 else torch.zeros_like(batch_losses[:, 0])
        summary = torch.stack([batch_losses.mean(1), spread], 1)
        summary_table, valid_table = self._read_tables(list(summary), valid_rows)
        stats = self._stats(summary_table[:, 0], summary_table[:, 1], valid_table)
        return self._mark_divergence(stats, range(self.n_runs))

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
        (table,) = self._read_tables([self._evaluate(self._get(k).model, data) for k in range(self.n_runs)])
        return table[:, 0], {name: table[:, 1 + i] for i, name in enumerate(self._metric_names)}

    def model(self, run: int = 0) -> nn.Module:
        """The live model of a run (for inspection; training it changes the run)."""
        return self._get(run).model

    # -- internals -------------------------------------------------------------------------

    def _get(self, k: int) -> _Run:
        run = self._runs[k]
        if run is None:
            raise RuntimeError(f"run {k} has not been initialised; call Engine.reset(seeds) first")
        return run

    def _train_epoch(self, run: _Run, lr: float, losses_out: torch.Tensor) -> None:
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        x, y = self.train.x, self.train.y
        batch = self.config.batch_size
        perm = torch.randperm(len(x), generator=run.order, device=self.device)
        model, optimizer, loss_fn = run.model, run.optimizer, self.task.loss
        model.train()
        for b, idx in enumerate(perm.split(batch)):
            loss = loss_fn(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses_out[b] = loss.detach()

    @torch.no_grad()
    def _evaluate(self, model: nn.Module, split: Split) -> torch.Tensor:
        """``[loss, *metrics]`` of ``model`` on ``split`` as one device vector (no host read)."""
        model.eval()
        n = len(split)
        total: torch.Tensor | None = None
        for start in range(0, n, EVAL_CHUNK):
            xb, yb = split.x[start : start + EVAL_CHUNK], split.y[start : start + EVAL_CHUNK]
            out = model(xb)
            metrics = self.task.metrics(out, yb)
            self._metric_names = tuple(metrics)
            values = torch.stack([self.task.loss(out, yb).detach(), *(v.detach() for v in metrics.values())])
            part = values.to(self.dtype) * (len(xb) / n)
            total = part if total is None else total + part
        assert total is not None
        return total

    @staticmethod
    def _read_tables(*groups: list[torch.Tensor]) -> list[np.ndarray]:
        """Stack groups of per-run device vectors and copy them to the host in one read."""
        widths = [g[0].numel() for g in groups]
        table = torch.cat([torch.stack(list(g)).to(torch.float64) for g in groups], dim=1).cpu().numpy()
        return list(np.split(table, np.cumsum(widths)[:-1], axis=1))

    def _stats(self, train_loss: np.ndarray, train_std: np.ndarray, valid_table: np.ndarray) -> EpochStats:
        metrics = {name: valid_table[:, 1 + i] for i, name in enumerate(self._metric_names)}
        n = len(valid_table)
        return EpochStats(train_loss, np.nan_to_num(train_std), valid_table[:, 0], metrics, np.zeros(n, bool))

    def _mark_divergence(self, stats: EpochStats, runs: Sequence[int]) -> EpochStats:
        first_train = np.array([self._get(k).first_train for k in runs])
        first_valid = np.array([self._get(k).first_valid for k in runs])
        factor = self.config.divergence_factor
        with np.errstate(invalid="ignore"):
            diverged = (
                ~np.isfinite(stats.train_loss)
                | ~np.isfinite(stats.valid_loss)
                | (stats.train_loss > factor * np.abs(first_train))
                | (stats.valid_loss > factor * np.abs(first_valid))
            )
        return EpochStats(stats.train_loss, stats.train_loss_std, stats.valid_loss, stats.metrics, diverged)
