"""The (epoch, LR) → convergence-rate surface of a task, and the three aims over a schedule family.

:func:`measure_surface` branches a reference run: at each branch epoch i it copies the
reference run's whole training state (:meth:`lrenv.Engine.run_state`) into K seeds × a log
grid of LRs, trains every branch one epoch to read the observed convergence rate

    r(i, α) = log(L_i / L_{i+1})          (on validation and on train loss)

and goes on at the same fixed LR to the end of the budget, which gives the final loss of
"α from epoch i on". Branches of one seed share their data order (seeds are paired across
LRs), so the LRs of a row differ in nothing but the LR.

The argmax of r over α per epoch is the *greedy ridge*: the LR a one-step-greedy rule picks.
The argmin of the final loss is the LR that is best for the end of the run. Their gap is the
short-horizon bias (Wu et al., 2018): greedy choices are too small late in training, and
greedy rewards trained on them learn timid schedules.

:func:`measure_aims` runs a schedule family (peak LR × shape) end to end through the
evaluation harness and reads the seed's three aims from each episode: epochs to the task's
target loss (fast convergence), final validation accuracy or loss (accuracy), and the share
of seeds whose test loss reaches the target (reliability).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lrenv.baselines import make_policy
from lrenv.engine import Engine
from lrenv.env.config import EnvConfig
from lrenv.evaluation.protocol import Job, PolicyRef, Slot
from lrenv.evaluation.runner import Episode, run_job
from lrenv.task import Task

#: Columns of the per-branch table (one row per branch epoch, LR and seed).
BRANCH_COLUMNS = (
    "epoch", "progress", "lr", "seed", "ref_valid_loss", "ref_train_loss", "valid_loss", "train_loss",
    "rate_valid", "rate_train", "diverged", "final_valid_loss", "final_diverged",
)  # fmt: skip
#: Columns of the surface table (one row per branch epoch and LR: mean and spread over seeds).
SURFACE_COLUMNS = (
    "epoch", "progress", "lr", "log10_lr", "seeds", "rate_valid_mean", "rate_valid_std", "rate_train_mean",
    "rate_train_std", "diverged_share", "final_valid_mean", "final_valid_std", "final_diverged_share",
)  # fmt: skip


def lr_grid(lr_range: Sequence[float], n: int) -> np.ndarray:
    """``n`` LRs spaced evenly in log over ``(low, high)``, both ends included."""
    low, high = (float(v) for v in lr_range)
    if not 0 < low < high < math.inf:
        raise ValueError(f"lr range must be (low, high) with 0 < low < high < inf, got {tuple(lr_range)!r}")
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"the LR grid needs at least 2 points, got {n!r}")
    return np.geomspace(low, high, n)


@dataclass
class Surface:
    """What :func:`measure_surface` measured.

    Attributes:
        task: The task's name.
        epochs: Its budget T.
        lrs: The LR grid ``[G]``.
        branch_epochs: The epochs i branched from ``[E]``.
        reference_lrs: The reference run's LR per epoch ``[T]``.
        reference_valid: Its validation loss after each epoch, ``[T + 1]`` (index 0: untrained).
        rows: One dict per branch (:data:`BRANCH_COLUMNS`).
        to_end: Whether the branches were trained to the end of the budget.
    """

    task: str
    epochs: int
    lrs: np.ndarray
    branch_epochs: list[int]
    reference_lrs: list[float]
    reference_valid: list[float]
    rows: list[dict[str, float]] = field(default_factory=list)
    to_end: bool = True

    def grid(self, column: str) -> np.ndarray:
        """``column`` as an array ``[E, G, K]`` (branch epoch, LR, seed)."""
        n_e, n_g = len(self.branch_epochs), len(self.lrs)
        values = np.array([r[column] for r in self.rows], dtype=np.float64)
        return values.reshape(n_e, n_g, -1)

    def table(self) -> list[dict[str, float]]:
        """The surface: mean and spread over seeds of each (epoch, LR) cell (:data:`SURFACE_COLUMNS`)."""
        rate_v, rate_t = self.grid("rate_valid"), self.grid("rate_train")
        div, final, final_div = self.grid("diverged"), self.grid("final_valid_loss"), self.grid("final_diverged")
        rows = []
        for e, epoch in enumerate(self.branch_epochs):
            for g, lr in enumerate(self.lrs):
                rows.append(
                    {
                        "epoch": epoch,
                        "progress": epoch / self.epochs,
                        "lr": float(lr),
                        "log10_lr": float(np.log10(lr)),
                        "seeds": rate_v.shape[2],
                        "rate_valid_mean": _mean(rate_v[e, g]),
                        "rate_valid_std": _std(rate_v[e, g]),
                        "rate_train_mean": _mean(rate_t[e, g]),
                        "rate_train_std": _std(rate_t[e, g]),
                        "diverged_share": float(div[e, g].mean()),
                        "final_valid_mean": _mean(final[e, g]),
                        "final_valid_std": _std(final[e, g]),
                        "final_diverged_share": float(final_div[e, g].mean()),
                    }
                )
        return rows

    def greedy_ridge(self) -> np.ndarray:
        """Per branch epoch, the LR of the highest mean one-epoch validation rate ``[E]``."""
        rate = np.where(self.grid("diverged") > 0, -np.inf, self.grid("rate_valid")).mean(axis=2)
        return self.lrs[np.argmax(np.nan_to_num(rate, nan=-np.inf), axis=1)]

    def final_ridge(self) -> np.ndarray:
        """Per branch epoch, the fixed LR from there on with the lowest mean final validation loss ``[E]``.

        A cell where any seed diverged does not count (the most reliable best, not the luckiest).
        """
        if not self.to_end:
            raise ValueError("the surface was measured without training the branches to the end (to_end=False)")
        final = self.grid("final_valid_loss")
        with warnings.catch_warnings():  # an all-diverged cell has no mean; it is excluded just below
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(final, axis=2)
        mean = np.where((self.grid("final_diverged") > 0).any(axis=2), np.inf, mean)
        return self.lrs[np.argmin(np.nan_to_num(mean, nan=np.inf), axis=1)]


def measure_surface(
    task: Task,
    reference_lrs: Sequence[float],
    lrs: Sequence[float],
    *,
    seeds: int = 3,
    branch_epochs: Sequence[int] | None = None,
    reference_seed: int = 0,
    to_end: bool = True,
    device: str = "cpu",
    batched: bool | None = None,
    on_epochs: Callable[[int], None] | None = None,
) -> Surface:
    """Branch a reference run at each epoch into seeds × LRs and measure the convergence rate.

    Args:
        task: The task (its config's budget, divergence factor).
        reference_lrs: The reference run's LR for each of the T epochs (e.g. a tuned schedule).
        lrs: The LR grid every branch point tries.
        seeds: Branch seeds K: fresh data orders per branch (paired across LRs).
        branch_epochs: Epochs i (0 ≤ i < T) to branch from; default every epoch.
        reference_seed: Run seed of the reference run (its initialisation and data order).
        to_end: Also train each branch at its LR to the end of the budget.
        device: Device of the runs.
        batched: Passed to both engines (``None``: stack the branches where the model allows it).
        on_epochs: Called with the number of run-epochs after each population epoch (progress).

    Returns:
        The :class:`Surface`.
    """
    epochs = task.config.epochs
    reference_lrs = [float(v) for v in reference_lrs]
    if len(reference_lrs) != epochs:
        raise ValueError(f"the reference schedule has {len(reference_lrs)} LRs; the task trains {epochs} epochs")
    grid = np.asarray(lrs, dtype=np.float64)
    if grid.ndim != 1 or len(grid) < 1 or not np.all(np.isfinite(grid) & (grid > 0)):
        raise ValueError(f"lrs must be a non-empty list of positive finite LRs, got {list(lrs)!r}")
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
    points = list(range(epochs)) if branch_epochs is None else sorted({int(i) for i in branch_epochs})
    if not points or points[0] < 0 or points[-1] >= epochs:
        raise ValueError(f"branch epochs must lie in 0..{epochs - 1}, got {list(branch_epochs or [])!r}")
    n = len(grid) * seeds
    with warnings.catch_warnings():  # the loop fallback of unbatchable models is announced by the CLI
        warnings.simplefilter("ignore")
        branches = Engine(task, n_runs=n, device=device, batched=batched)
        reference = Engine(task, n_runs=1, device=device, batched=branches.batched)
    # branch k: LR g = k // seeds, seed s = k % seeds; rows come out in [epoch, LR, seed] order
    branch_lrs = np.repeat(grid, seeds)
    branch_seeds = [reference_seed * 1000 + 1 + s for s in range(seeds)] * len(grid)
    start = reference.reset([reference_seed])
    ref_valid, ref_train = [float(start.valid_loss[0])], [float(start.train_loss[0])]
    surface = Surface(task.name or type(task).__name__, epochs, grid, points, reference_lrs, ref_valid, to_end=to_end)
    for i in range(epochs):
        if i in points:
            surface.rows.extend(_branch(branches, reference.run_state(0), i, branch_lrs, branch_seeds, ref_valid[i], ref_train[i], to_end, on_epochs))
        stats = reference.run_epoch([reference_lrs[i]])
        ref_valid.append(float(stats.valid_loss[0]))
        ref_train.append(float(stats.train_loss[0]))
        if on_epochs is not None:
            on_epochs(1)
    return surface


def _branch(
    engine: Engine,
    state: dict,
    epoch: int,
    lrs: np.ndarray,
    seeds: list[int],
    valid_i: float,
    train_i: float,
    to_end: bool,
    on_epochs: Callable[[int], None] | None,
) -> list[dict[str, float]]:
    """Rows of the branches of one state (branch epoch ``epoch``)."""
    n, epochs = engine.n_runs, engine.config.epochs
    engine.load_run_state(range(n), state, seeds=seeds)
    with np.errstate(invalid="ignore", divide="ignore"):
        first = engine.run_epoch(lrs)
        ever = first.diverged.copy()
        last = first
        for _ in range(epoch + 1, epochs if to_end else epoch + 1):
            if on_epochs is not None:
                on_epochs(n)
            # a diverged branch idles at LR 0: its numbers no longer matter, its overflows would only warn
            last = engine.run_epoch(np.where(ever, 0.0, lrs))
            ever |= last.diverged
        rate_v = np.log(valid_i / first.valid_loss)
        rate_t = np.log(train_i / first.train_loss)
    if on_epochs is not None:
        on_epochs(n)
    return [
        {
            "epoch": epoch,
            "progress": epoch / epochs,
            "lr": float(lrs[k]),
            "seed": seeds[k],
            "ref_valid_loss": valid_i,
            "ref_train_loss": train_i,
            "valid_loss": float(first.valid_loss[k]),
            "train_loss": float(first.train_loss[k]),
            "rate_valid": float(rate_v[k]) if not first.diverged[k] else math.nan,
            "rate_train": float(rate_t[k]) if not first.diverged[k] else math.nan,
            "diverged": float(first.diverged[k]),
            "final_valid_loss": (float(last.valid_loss[k]) if not ever[k] else math.nan) if to_end else math.nan,
            "final_diverged": float(ever[k]) if to_end else math.nan,
        }
        for k in range(n)
    ]


#: Schedule shapes of the aims grid: a baseline and its shape setting (the peak LR is the swept one).
AIM_SHAPES: dict[str, tuple[str, dict[str, float]]] = {
    "constant": ("constant", {}),
    "step": ("step", {"gamma": 0.1}),
    "cosine": ("cosine", {}),
    "wsd": ("wsd", {"decay_fraction": 0.2}),
}


def schedule_lrs(shape: str, peak: float, task: Task) -> list[float]:
    """The per-epoch LRs of a shape of :data:`AIM_SHAPES` at peak LR ``peak`` on ``task``."""
    if shape not in AIM_SHAPES:
        raise ValueError(f"unknown schedule shape {shape!r}; choose from {', '.join(AIM_SHAPES)}")
    baseline, params = AIM_SHAPES[shape]
    return make_policy(baseline, task.config, lr=float(peak), **params).lrs()


def measure_aims(
    task: str | Task,
    peaks: Sequence[float],
    shapes: Sequence[str],
    seeds: Sequence[int],
    *,
    env: EnvConfig | None = None,
    population: int = 64,
    on_epochs: Callable[[int], None] | None = None,
) -> list[Episode]:
    """Run every (shape, peak LR) schedule on every seed to the end; the episodes carry the aims.

    Episodes are the harness's (:class:`lrenv.evaluation.runner.Episode`): ``epochs_to_target``,
    ``final_accuracy``/``final_loss`` and ``accepted`` are the three aims; ``method`` is the
    shape and ``params["lr"]`` the peak.
    """
    from lrenv.registry import make_task

    env = env or EnvConfig()
    task_obj = make_task(task, **env.task_overrides)
    slots = [
        Slot(shape, (("lr", float(peak)),), int(seed), "aims", PolicyRef("fixed", name=shape, lrs=tuple(schedule_lrs(shape, peak, task_obj))))
        for shape in shapes
        for peak in peaks
        for seed in seeds
    ]
    spec = task if isinstance(task, str) else task_obj
    episodes: list[Episode] = []
    for start in range(0, len(slots), population):
        episodes.extend(run_job(Job(spec, env, slots[start : start + population]), on_epochs=on_epochs))
    return episodes


def _mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else math.nan


def _std(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.std(ddof=1)) if len(x) > 1 else 0.0 if len(x) == 1 else math.nan


@dataclass
class SurfaceNetwork:
    """A small MLP fitted by regression to a surface: (i/T, log10 α) → log final validation loss.

    It smooths the measured final-loss surface between grid points and epochs; its argmin over
    α per epoch is a Ψ fitted without RL (:meth:`schedule`). It only knows the states of the
    reference run it was branched from, and the LRs that did not diverge there.

    Attributes:
        model: The fitted ``sklearn.neural_network.MLPRegressor``.
        log_lr_range: ``(low, high)`` log10 LRs it was fitted on.
        stable_log_lr: Per branch epoch, the largest log10 LR with no diverged seed.
        branch_progress: Progress i/T of the branch epochs.
        r2_train: R² on the rows it was fitted on.
        r2_heldout: R² on the held-out seed's rows (``nan`` with one seed).
    """

    model: object
    log_lr_range: tuple[float, float]
    stable_log_lr: np.ndarray
    branch_progress: np.ndarray
    r2_train: float
    r2_heldout: float

    def predict(self, progress: np.ndarray, log10_lr: np.ndarray) -> np.ndarray:
        """Predicted log final validation loss at ``(progress, log10 lr)`` pairs."""
        x = np.column_stack([np.asarray(progress, np.float64).ravel(), np.asarray(log10_lr, np.float64).ravel()])
        return self.model.predict(x)  # type: ignore[attr-defined]

    def schedule(self, epochs: int, points: int = 200) -> list[float]:
        """Per epoch i < T, the LR whose predicted final loss from state i is lowest, among stable LRs."""
        low, high = self.log_lr_range
        candidates = np.linspace(low, high, points)
        lrs = []
        for i in range(epochs):
            progress = i / epochs
            ceiling = float(np.interp(progress, self.branch_progress, self.stable_log_lr))
            allowed = candidates[candidates <= ceiling + 1e-9]
            allowed = allowed if len(allowed) else candidates[:1]
            predicted = self.predict(np.full(len(allowed), progress), allowed)
            lrs.append(float(10 ** allowed[int(np.argmin(predicted))]))
        return lrs


def fit_surface_network(surface: Surface, *, hidden: tuple[int, ...] = (32, 32), seed: int = 0) -> SurfaceNetwork:
    """Fit a :class:`SurfaceNetwork` to the branches' final losses, holding out the last seed.

    Raises:
        ValueError: The surface was measured without ``to_end`` or has too few finite rows.
    """
    from sklearn.metrics import r2_score
    from sklearn.neural_network import MLPRegressor

    if not surface.to_end:
        raise ValueError("a surface network needs the branches' final losses: measure the surface with to_end=True")
    rows = [r for r in surface.rows if r["final_diverged"] == 0 and np.isfinite(r["final_valid_loss"]) and r["final_valid_loss"] > 0]
    if len(rows) < 8:
        raise ValueError(f"only {len(rows)} branches ended without diverging; a surface network needs at least 8")
    x = np.array([[r["progress"], math.log10(r["lr"])] for r in rows])
    y = np.log([r["final_valid_loss"] for r in rows])
    seeds = np.array([r["seed"] for r in rows])
    held = seeds == seeds.max() if len(set(seeds)) > 1 else np.zeros(len(rows), bool)

    def net() -> MLPRegressor:
        return MLPRegressor(hidden_layer_sizes=hidden, activation="tanh", solver="lbfgs", max_iter=5000, random_state=seed, alpha=1e-4)

    r2_heldout = math.nan
    if held.any():
        probe = net().fit(x[~held], y[~held])
        r2_heldout = float(r2_score(y[held], probe.predict(x[held])))
    model = net().fit(x, y)
    diverged = surface.grid("final_diverged") > 0
    log_lrs = np.log10(surface.lrs)
    stable = np.array([log_lrs[~diverged[e].any(axis=1)].max(initial=log_lrs[0]) for e in range(len(surface.branch_epochs))])
    return SurfaceNetwork(
        model=model,
        log_lr_range=(float(log_lrs.min()), float(log_lrs.max())),
        stable_log_lr=stable,
        branch_progress=np.array(surface.branch_epochs) / surface.epochs,
        r2_train=float(r2_score(y, model.predict(x))),
        r2_heldout=r2_heldout,
    )
