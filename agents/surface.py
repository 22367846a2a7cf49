"""Map a task's (epoch, LR) → convergence-rate surface, and fit Ψ to it without RL.

Usage::

    python -m agents.surface --task MNIST1D-MLP-v0 --out runs/surface-mnist1d          # full: ~5-10 min
    python -m agents.surface --task Digits-MLP-v0 --quick --out runs/surface-quick    # ~1 min
    python -m agents.surface --task MNIST1D-MLP-v0 --track                            # also to W&B

What it does, in order:

1. **Tuned baselines** (the harness, cached): a few classic schedules tuned on the task and the
   shipped default policy, on paired evaluation seeds. Their LR paths are drawn on the surface;
   tuned cosine is the reference run the surface branches from.
2. **The surface** (:func:`lrenv.surface.measure_surface`): from the reference run's state at
   each branch epoch i, K seeds × a log grid of LRs train one epoch (the observed rate
   r(i, α) = log(L_i / L_{i+1})) and on to the end at that LR (the final loss). The greedy
   ridge (argmax of r) against the LR best for the final loss shows the short-horizon bias.
3. **The three aims** (:func:`lrenv.surface.measure_aims`) over peak LR × schedule shape:
   epochs to the task's target loss, final accuracy, share of seeds accepted on the test split.
4. **Ψ fitted from experiments**, two routes:
   a. a schedule-aware loss-curve law (:mod:`lrenv.laws`, the multi-power law) fitted from
      at most 5 runs of step 3, scored on every other run of step 3 (held-out schedules), and
      the schedule it predicts best;
   b. a network fitted by regression to the surface's final losses, and the schedule of its
      argmin per epoch.
   Both schedules are written as ``lrenv-schedule`` files and compared with the tuned
   baselines on the evaluation seeds (``--runs law_schedule.json`` works in agents.evaluate).

Writes into ``--out``: ``surface.csv`` (mean and spread over seeds per epoch and LR),
``branches.csv`` (every branch), ``aims.csv``, ``surface.png`` (heat map and 3-D surface with
the ridges and LR paths), ``aims.png``, ``law.png``, ``law.json``, ``law_schedule.json``,
``network_schedule.json``, ``results.md`` (the comparison) and ``summary.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2-core machines: parallelism comes from batching

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lrenv import run_dir
from lrenv.agents.args import dataclass_parser
from lrenv.evaluation import DEFAULT_EVAL_SEEDS, DEFAULT_TRIALS, DEFAULT_TUNE_SEEDS, Contender, Results, compare, default_cache_dir, load_run, write_csv
from lrenv.evaluation.protocol import SURFACE_SEED_BASE
from lrenv.registry import make_task
from lrenv.surface import AIM_SHAPES, BRANCH_COLUMNS, SURFACE_COLUMNS, Surface, fit_surface_network, lr_grid, measure_aims, measure_surface

#: Baselines tuned for the overlay; cosine is also the reference run.
OVERLAY_BASELINES = ("constant", "step", "cosine", "wsd", "bold_driver")
REFERENCE = "cosine"
#: At most this many runs feed the law fit (the issue's budget); the rest are held out.
LAW_RUNS = 5

QUICK = {"lrs": 6, "seeds": 2, "branch_every": 4, "peaks": 5, "aim_seeds": 2, "eval_seeds": 3, "tune_seeds": 2, "trials": 2}
FULL = {
    "lrs": 12,
    "seeds": 3,
    "branch_every": 1,
    "peaks": 8,
    "aim_seeds": 4,
    "eval_seeds": DEFAULT_EVAL_SEEDS,
    "tune_seeds": DEFAULT_TUNE_SEEDS,
    "trials": DEFAULT_TRIALS,
}


@dataclass
class Args:
    task: str = field(default="MNIST1D-MLP-v0", metadata={"help": "the task whose surface to map"})
    quick: bool = field(default=False, metadata={"help": f"a small surface in about a minute: {QUICK}"})
    out: str = field(default="runs/surface", metadata={"help": "output folder"})
    lrs: int | None = field(default=None, metadata={"help": f"LR grid points over the task's LR range (default {FULL['lrs']})"})
    seeds: int | None = field(default=None, metadata={"help": f"branch seeds K per LR (default {FULL['seeds']})"})
    branch_every: int | None = field(default=None, metadata={"help": "branch every this many epochs (default 1: every epoch)"})
    peaks: int | None = field(default=None, metadata={"help": f"peak LRs of the aims grid (default {FULL['peaks']})"})
    aim_seeds: int | None = field(default=None, metadata={"help": f"seeds per aims-grid schedule (default {FULL['aim_seeds']})"})
    workers: int = field(default=2, metadata={"help": "worker processes of the comparison (0: this process)"})
    device: str = field(default="cpu", metadata={"help": "device of the inner runs: cpu, cuda, auto"})
    cache: bool = field(default=True, metadata={"help": "reuse the comparison's finished populations from the cache"})
    seed: int = field(default=0, metadata={"help": "seed of the reference run, the branches and the fits"})
    track: bool = field(default=False, metadata={"help": "log tables and plots to Weights & Biases (offline unless logged in)"})
    wandb_project: str = field(default="lrenv", metadata={"help": "W&B project"})
    wandb_entity: str | None = field(default=None, metadata={"help": "W&B entity (user or team)"})


def parse_args(argv: list[str] | None = None) -> Args:
    parser = dataclass_parser(Args, "python -m agents.surface", __doc__.split("\n\n")[0])
    return Args(**vars(parser.parse_args(argv)))


def aims_seeds(seed: int, n: int) -> list[int]:
    """Env seeds of the aims grid, whose runs the law is fitted on: neither tuning nor evaluation seeds."""
    return [SURFACE_SEED_BASE + 1000 * (seed + 1) + k for k in range(n)]


def settings(args: Args) -> dict[str, Any]:
    """The run's sizes: ``--quick`` or full defaults, explicit options win."""
    base = dict(QUICK if args.quick else FULL)
    for key in ("lrs", "seeds", "branch_every", "peaks", "aim_seeds"):
        value = getattr(args, key)
        if value is not None:
            if value < 1 or (key == "lrs" and value < 2):
                raise ValueError(f"--{key.replace('_', '-')} must be at least {2 if key == 'lrs' else 1}, got {value}")
            base[key] = value
    return base


# -- fits -----------------------------------------------------------------------------------


def mean_curves(episodes: list[Any], split: str = "valid") -> dict[tuple[str, float], tuple[list[float], list[float], bool]]:
    """``{(shape, peak): (lrs, seed-mean loss curve on "valid" or "train", any seed diverged)}`` of the aims grid."""
    groups: dict[tuple[str, float], list[Any]] = {}
    for e in episodes:
        groups.setdefault((e.method, e.params["lr"]), []).append(e)
    out = {}
    for key, eps in groups.items():
        diverged = any(e.diverged for e in eps)
        curves = np.array([e.valid_loss if split == "valid" else e.train_loss for e in eps]) if not diverged else np.zeros((0,))
        out[key] = (eps[0].lrs, curves.mean(0).tolist() if len(curves) else [], diverged)
    return out


def choose_law_runs(curves: dict[tuple[str, float], tuple[list[float], list[float], bool]]) -> list[tuple[str, float]]:
    """At most :data:`LAW_RUNS` schedules of the aims grid to fit the law on: every shape at the peak
    of the best schedule (lowest mean final loss), then constant one grid step lower (a second LR level)."""
    finished = {k: v for k, v in curves.items() if not v[2] and v[1]}
    if not finished:
        raise ValueError("every schedule of the aims grid diverged: there is nothing to fit a law on")
    best = min(finished, key=lambda k: finished[k][1][-1])[1]
    chosen = [(shape, best) for shape in AIM_SHAPES if (shape, best) in finished]
    lower = [p for p in sorted({p for _, p in curves}) if p < best]
    if lower and ("constant", lower[-1]) in finished:
        chosen.append(("constant", lower[-1]))
    return chosen[:LAW_RUNS]


def ridge_schedule(ridge: np.ndarray, branch_epochs: list[int], epochs: int) -> list[float]:
    """A ridge of the surface as a schedule: its LR at every epoch, log-interpolated between branch epochs."""
    return [float(v) for v in np.exp(np.interp(np.arange(epochs), branch_epochs, np.log(ridge)))]


def fit_law(curves: dict, steps_per_epoch: int, epochs: int, seed: int) -> dict[str, Any]:
    """Fit the multi-power law on ≤ 5 schedules, score it on the others, optimise a schedule under it.

    Held-out schedules are scored twice: all of them, and those whose LRs stay inside the fitted
    runs' LR range (a law fitted at one LR level says little about LRs it never saw).
    """
    from lrenv.laws import evaluate_law, fit_multi_power_law, optimal_schedule

    fit_keys = choose_law_runs(curves)
    fit_runs = [(curves[k][0], curves[k][1]) for k in fit_keys]
    law, report = fit_multi_power_law(fit_runs, steps_per_epoch, seed=seed)
    held_keys = [k for k, (_, curve, diverged) in curves.items() if k not in fit_keys and not diverged and curve]
    seen = [lr for k in fit_keys for lr in curves[k][0]]
    bounds = (min(seen), max(seen))
    inside = [k for k in held_keys if bounds[0] <= min(curves[k][0]) and max(curves[k][0]) <= bounds[1]]
    lrs, predicted = optimal_schedule(law, epochs, bounds, seed=seed)
    return {
        "law": law,
        "fit_runs": [{"shape": s, "peak": p} for s, p in fit_keys],
        "heldout_runs": [{"shape": s, "peak": p} for s, p in held_keys],
        "fit": _plain(report),
        "heldout": _plain(evaluate_law(law, [(curves[k][0], curves[k][1]) for k in held_keys])) if held_keys else {},
        "heldout_inside_range": _plain(evaluate_law(law, [(curves[k][0], curves[k][1]) for k in inside])) if inside else {},
        "lr_bounds": list(bounds),
        "optimal_lrs": [float(v) for v in lrs],
        "predicted_final_loss": float(predicted),
    }


def _plain(value: Any) -> Any:
    """Dataclasses and numpy values as JSON-able plain values."""
    if hasattr(value, "__dataclass_fields__"):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def schedule_file(path: Path, name: str, task: str, lrs: list[float], **extra: Any) -> Path:
    """Write an ``lrenv-schedule`` file (a fixed per-epoch schedule agents.evaluate can compare)."""
    data = {"format": "lrenv-schedule", "version": 1, "name": name, "task": task, "lrs": [float(v) for v in lrs], **extra}
    write_json(path, data)
    return path


def write_json(path: Path, data: Any) -> None:
    """:func:`lrenv.run_dir.write_json` (atomic) of ``data`` with dataclasses and numpy values made plain."""
    run_dir.write_json(path, _plain(data))


# -- plots ----------------------------------------------------------------------------------


def mean_lr_path(results: Results, task: str, method: str) -> np.ndarray:
    """A method's LR per epoch, the geometric mean over evaluation seeds that did not diverge."""
    paths = [e.lrs for e in results.evaluation(task, method) if not e.diverged and e.lrs]
    if not paths:
        return np.zeros(0)
    return np.exp(np.log(np.array(paths)).mean(0))


def plot_surface(surface: Surface, paths: dict[str, np.ndarray], out: Path) -> None:
    """Heat map (epoch × log LR → mean validation rate) with ridges and LR paths, and the 3-D surface."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rate = np.array([[r["rate_valid_mean"] for r in surface.table()]]).reshape(len(surface.branch_epochs), len(surface.lrs))
    diverged = surface.grid("diverged").mean(axis=2) > 0.5
    shown = np.where(diverged, np.nan, rate)
    finite = shown[np.isfinite(shown)]
    vmin, vmax = (np.percentile(finite, 2), np.percentile(finite, 98)) if len(finite) else (0, 1)
    epochs = np.array(surface.branch_epochs)
    log_lrs = np.log10(surface.lrs)
    fig = plt.figure(figsize=(15, 6))
    ax = fig.add_subplot(1, 2, 1)
    mesh = ax.pcolormesh(epochs, log_lrs, shown.T, shading="nearest", cmap="viridis", vmin=vmin, vmax=vmax)
    ax.pcolormesh(epochs, log_lrs, np.where(diverged, 1.0, np.nan).T, shading="nearest", cmap="Greys", vmin=0, vmax=2)
    fig.colorbar(mesh, ax=ax, label="rate log(L_i / L_{i+1}) on validation, mean over seeds")
    if surface.to_end:
        ax.plot(epochs, np.log10(surface.final_ridge()), "r-s", ms=7, lw=3, label="best fixed LR for the final loss")
    ax.plot(epochs, np.log10(surface.greedy_ridge()), "w--o", ms=4, lw=1.5, label="greedy ridge: argmax rate")
    styles = iter(["-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 1)), (0, (5, 5)), (0, (3, 5, 1, 5))])
    for name, lrs in paths.items():
        if len(lrs):
            ax.plot(np.arange(len(lrs)), np.log10(lrs), linestyle=next(styles, "-"), lw=1.4, label=name)
    ax.set_xlabel("epoch i (branch point; the LR trains epoch i+1)")
    ax.set_ylabel("log10 learning rate")
    ax.set_title(f"{surface.task}: convergence rate (grey: diverged)")
    ax.legend(fontsize=7, loc="lower left")
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    e_grid, l_grid = np.meshgrid(epochs, log_lrs, indexing="ij")
    ax3.plot_surface(e_grid, l_grid, np.clip(np.nan_to_num(shown, nan=vmin), vmin, vmax), cmap="viridis", vmin=vmin, vmax=vmax)
    ax3.set_xlabel("epoch i")
    ax3.set_ylabel("log10 LR")
    ax3.set_zlabel("rate")
    ax3.set_title("the same surface in 3-D (diverged cells at the floor)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def aims_table(episodes: list[Any]) -> list[dict[str, Any]]:
    """Per (shape, peak): the three aims, over the seeds."""
    groups: dict[tuple[str, float], list[Any]] = {}
    for e in episodes:
        groups.setdefault((e.method, e.params["lr"]), []).append(e)
    rows = []
    for (shape, peak), eps in groups.items():
        reached = [e.epochs_to_target for e in eps]
        finite = [r for r in reached if math.isfinite(r)]
        acc = [e.final_accuracy for e in eps]
        rows.append(
            {
                "shape": shape,
                "peak_lr": peak,
                "seeds": len(eps),
                "epochs_to_target_median": float(np.median(reached)) if len(finite) * 2 > len(reached) else math.inf,
                "reached_target_share": len(finite) / len(eps),
                "final_valid_loss_mean": float(np.mean([e.final_loss for e in eps])),
                "final_accuracy_mean": float(np.nanmean(acc)) if not all(math.isnan(a) for a in acc) else math.nan,
                "accepted_share": float(np.nanmean([e.accepted for e in eps])),
                "diverged_share": float(np.mean([e.diverged for e in eps])),
            }
        )
    return rows


def plot_aims(rows: list[dict[str, Any]], task: str, target: float | None, out: Path) -> None:
    """Three heat maps over shape × peak LR: epochs to target, final accuracy (or loss), acceptance share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    peaks = sorted({r["peak_lr"] for r in rows})
    cell = {(r["shape"], r["peak_lr"]): r for r in rows}
    has_acc = any(math.isfinite(r["final_accuracy_mean"]) for r in rows)
    panels = [
        ("epochs_to_target_median", f"fast: median epochs to valid loss ≤ {target} (blank: not reached)", "viridis_r"),
        (
            "final_accuracy_mean" if has_acc else "final_valid_loss_mean",
            "accurate: final validation " + ("accuracy" if has_acc else "loss"),
            "viridis" if has_acc else "viridis_r",
        ),
        ("accepted_share", "reliable: share of seeds with test loss ≤ target", "viridis"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(16, 3.8))
    for ax, (key, title, cmap) in zip(axes, panels):
        values = np.array([[cell.get((s, p), {}).get(key, np.nan) for p in peaks] for s in shapes], dtype=float)
        values[~np.isfinite(values)] = np.nan
        im = ax.imshow(values, aspect="auto", cmap=cmap)
        for i in range(len(shapes)):
            for j in range(len(peaks)):
                if np.isfinite(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.3g}", ha="center", va="center", fontsize=7, color="w")
        ax.set_xticks(range(len(peaks)), [f"{p:.2g}" for p in peaks], rotation=45, fontsize=7)
        ax.set_yticks(range(len(shapes)), shapes)
        ax.set_xlabel("peak LR")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax)
    fig.suptitle(f"{task}: the three aims over a schedule family")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_law(law: Any, curves: dict, fit: dict[str, Any], out: Path) -> None:
    """Observed (dots) and law-predicted (lines) validation curves: the fitted runs and held-out ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fitted = [(r["shape"], r["peak"]) for r in fit["fit_runs"]]
    held = [(r["shape"], r["peak"]) for r in fit["heldout_runs"]]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    for ax, keys, title in ((axes[0], fitted, "fitted runs"), (axes[1], held[:: max(1, len(held) // 8)], "held-out schedules (a sample)")):
        for i, key in enumerate(keys):
            lrs, curve, _ = curves[key]
            color = f"C{i % 10}"
            ax.plot(range(len(curve)), curve, "o", color=color, ms=3)
            predicted = law.predict(lrs)
            ax.plot(range(len(curve) - len(predicted), len(curve)), predicted, "-", color=color, label=f"{key[0]} @ {key[1]:.3g}")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("validation loss (dots: measured, lines: law)")
    fig.suptitle(f"multi-power law: fit R² {fit['fit'].get('r2', float('nan')):.3f}, held-out R² {fit['heldout'].get('r2', float('nan')):.3f}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# -- the job --------------------------------------------------------------------------------


def run_comparison(task: str, sizes: dict[str, Any], contenders: list[Contender], args: Args) -> Results:
    cache_dir = default_cache_dir() if args.cache else None
    return compare(
        [task],
        baselines=list(OVERLAY_BASELINES),
        contenders=contenders,
        eval_seeds=sizes["eval_seeds"],
        tune_seeds=sizes["tune_seeds"],
        trials=sizes["trials"],
        device=args.device,
        workers=args.workers,
        cache_dir=cache_dir,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    torch.set_num_threads(1)
    args = parse_args(argv)
    start = time.perf_counter()
    sizes = settings(args)
    task = make_task(args.task)
    name = task.name or args.task
    config = task.config
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clock: dict[str, float] = {}

    def lap(step: str, since: float) -> float:
        clock[step] = round(time.perf_counter() - since, 1)
        print(f"  {step}: {clock[step]:.0f} s", flush=True)
        return time.perf_counter()

    print(f"Surface of {name}: {config.epochs} epochs, {config.optimizer}, LRs {config.lr_range}; sizes {sizes}", flush=True)
    t = time.perf_counter()
    default = load_run("default")
    results = run_comparison(name, sizes, [default], args)
    reference_lrs = results.evaluation(name, REFERENCE)[0].lrs
    t = lap("tuned baselines and the default policy", t)

    grid = lr_grid(config.lr_range, sizes["lrs"])
    surface = measure_surface(
        task,
        reference_lrs,
        grid,
        seeds=sizes["seeds"],
        branch_epochs=range(0, config.epochs, sizes["branch_every"]),
        reference_seed=SURFACE_SEED_BASE + args.seed,
        device=args.device,
    )
    write_csv(out / "branches.csv", [{c: r[c] for c in BRANCH_COLUMNS} for r in surface.rows])
    write_csv(out / "surface.csv", [{c: r[c] for c in SURFACE_COLUMNS} for r in surface.table()])
    t = lap("surface", t)

    peaks = lr_grid(config.lr_range, sizes["peaks"])
    aim_seeds = aims_seeds(args.seed, sizes["aim_seeds"])
    aims = measure_aims(name, peaks, list(AIM_SHAPES), aim_seeds)
    aims_rows = aims_table(aims)
    write_csv(out / "aims.csv", aims_rows)
    t = lap("aims grid", t)

    curves = mean_curves(aims)
    steps = -(-len(task.data().train) // config.batch_size)
    law_fit = fit_law(curves, steps, config.epochs, args.seed)
    # the law describes training loss (LLM pretraining, where train and validation agree): its fit there, for reference
    train_fit = fit_law(mean_curves(aims, "train"), steps, config.epochs, args.seed)
    law_record = {k: v for k, v in law_fit.items() if k != "law"}
    train_record = {"law": train_fit["law"].to_dict(), **{k: v for k, v in train_fit.items() if k != "law"}}
    write_json(
        out / "law.json", {"format": "lrenv-law", "version": 1, "task": name, "law": law_fit["law"].to_dict(), **law_record, "on_train_loss": train_record}
    )
    law_file = schedule_file(out / "law_schedule.json", f"law-{name}", name, law_fit["optimal_lrs"], source="multi-power law fit")
    network = fit_surface_network(surface, seed=args.seed)
    network_lrs = network.schedule(config.epochs)
    network_file = schedule_file(
        out / "network_schedule.json",
        f"network-{name}",
        name,
        network_lrs,
        source="MLP regression of the surface",
        r2_train=network.r2_train,
        r2_heldout=network.r2_heldout,
    )
    t = lap("law and network fits", t)

    greedy_lrs = ridge_schedule(surface.greedy_ridge(), surface.branch_epochs, config.epochs)
    final_lrs = ridge_schedule(surface.final_ridge(), surface.branch_epochs, config.epochs)
    fitted = [
        Contender(name=f"law-{name}", kind="reference", tasks=(name,), lrs={name: law_fit["optimal_lrs"]}),
        Contender(name=f"network-{name}", kind="reference", tasks=(name,), lrs={name: network_lrs}),
        Contender(name="greedy-ridge", kind="reference", tasks=(name,), lrs={name: greedy_lrs}),
        Contender(name="best-fixed-ridge", kind="reference", tasks=(name,), lrs={name: final_lrs}),
    ]
    results = run_comparison(name, sizes, [default, *fitted], args)
    (out / "results.md").write_text(results.to_markdown())
    write_csv(out / "summary_table.csv", results.summary())
    t = lap("comparison with the fitted schedules", t)

    overlay = {f"tuned {m}": mean_lr_path(results, name, m) for m in OVERLAY_BASELINES if m != "bold_driver"}
    overlay["default Ψ (mean over seeds)"] = mean_lr_path(results, name, default.name)
    overlay["law optimum"] = np.array(law_fit["optimal_lrs"])
    overlay["network argmin"] = np.array(network_lrs)
    plot_surface(surface, overlay, out / "surface.png")
    plot_aims(aims_rows, name, config.target_loss, out / "aims.png")
    plot_law(law_fit["law"], curves, law_fit, out / "law.png")
    lap("plots", t)

    greedy, best = surface.greedy_ridge(), surface.final_ridge()
    summary = {
        "task": name,
        "sizes": sizes,
        "run_epochs": {
            "surface": int(sum(config.epochs - e for e in surface.branch_epochs) * len(grid) * sizes["seeds"]) + config.epochs,
            "aims": len(aims) * config.epochs,
        },
        "short_horizon_bias": {
            "branch_epochs": surface.branch_epochs,
            "greedy_lr": greedy.tolist(),
            "best_final_lr": best.tolist(),
            "median_log10_ratio_greedy_to_best": float(np.median(np.log10(greedy / best))),
        },
        "law": {k: law_fit[k] for k in ("fit_runs", "fit", "heldout", "heldout_inside_range", "lr_bounds", "predicted_final_loss")},
        "law_on_train_loss": {k: train_fit[k] for k in ("fit", "heldout", "heldout_inside_range")},
        "network": {"r2_train": network.r2_train, "r2_heldout": network.r2_heldout},
        "comparison": [{k: r[k] for k in ("method", "valid_loss_mean", "rank") if k in r} for r in results.summary()],
        "wall_time_s": clock,
    }
    write_json(out / "summary.json", summary)
    print(results.to_markdown())
    bias = summary["short_horizon_bias"]["median_log10_ratio_greedy_to_best"]
    print(f"Short-horizon bias: greedy LR / best-for-final LR, median over branch epochs: 10^{bias:.2f}")
    train_held = train_fit["heldout"]
    print(
        f"Law on training loss: fit R² {train_fit['fit']['r2']:.3f}; "
        f"held-out R² {train_held.get('r2', math.nan):.3f}, final-loss error {train_held.get('final_mare', math.nan):.1%}"
    )
    held, inside = law_fit["heldout"], law_fit["heldout_inside_range"]
    print(
        f"Law: fit R² {law_fit['fit']['r2']:.3f}; held-out R² {held.get('r2', math.nan):.3f}, final-loss error {held.get('final_mare', math.nan):.1%} "
        f"({inside.get('r2', math.nan):.3f}, {inside.get('final_mare', math.nan):.1%} inside the fitted LR range); network held-out R² {network.r2_heldout:.3f}"
    )
    written = ["surface.csv", "branches.csv", "aims.csv", "surface.png", "aims.png", "law.png", "law.json", law_file.name, network_file.name]
    print(f"Wrote {out}/: {', '.join(written)}, results.md, summary.json")
    print(f"Wall time: {time.perf_counter() - start:.0f} s")
    if args.track:
        track(out, summary, args)
    return summary


def track(out: Path, summary: dict[str, Any], args: Args) -> None:
    """Log the tables and plots to a W&B run (offline unless logged in)."""
    try:
        import wandb
    except ImportError as exc:
        raise SystemExit('--track needs wandb: pip install "lrenv[wandb]" (or pip install wandb)') from exc
    import csv

    from lrenv.tracking import start_wandb

    run = start_wandb(
        {"task": args.task, **summary["sizes"]}, project=args.wandb_project, entity=args.wandb_entity, name=f"surface-{args.task}", folder=out, tags=["surface"]
    ).run
    payload: dict[str, Any] = {}
    for table in ("surface", "aims", "summary_table"):
        with open(out / f"{table}.csv", newline="") as f:
            rows = list(csv.reader(f))
        payload[table] = wandb.Table(columns=rows[0], data=rows[1:])
    for image in ("surface", "aims", "law"):
        payload[f"{image}_plot"] = wandb.Image(str(out / f"{image}.png"))
    run.log(payload)
    run.summary.update({"law_heldout_r2": summary["law"]["heldout"].get("r2"), "network_heldout_r2": summary["network"]["r2_heldout"]})
    folder = Path(run.dir).parent
    run.finish()
    print(f"W&B: logged to {folder}")


if __name__ == "__main__":
    from lrenv.registry import UnknownTaskError

    try:
        main()
    except (UnknownTaskError, ValueError, FileNotFoundError) as exc:  # bad input: a clear message, no traceback
        sys.exit(f"error: {exc.args[0] if exc.args else exc}")
