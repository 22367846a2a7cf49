"""Compare learned LR schedules with tuned classic schedules: tables, CSV and plots.

Usage::

    python -m agents.evaluate                                   # all built-in tasks, baselines only
    python -m agents.evaluate --runs runs/<run> runs/<run2>     # add trained policies and their win rates
    python -m agents.evaluate --tasks heldout --runs runs/<run> # generalisation: tasks no policy trained on
    python -m agents.evaluate --tasks all --runs default        # the default policy shipped with lrenv
    python -m agents.evaluate --runs default x/formula.json     # a closed-form formula next to it
    python -m agents.evaluate --runs x/schedule.json            # a fixed schedule (lrenv-schedule file)
    python -m agents.evaluate --quick                           # a smoke run: tiny budgets, seconds

Every baseline of ``lrenv.baselines`` is tuned per task with the same budget (``--trials``
settings: a log grid over its peak LR and, where it has one, its second parameter) on
``--tune-seeds`` seeds, then evaluated with the learned policies (no per-task tuning) and
reference schedules (the noisy quadratic's analytically optimal one) on ``--seeds`` separate
evaluation seeds; a seed fixes the initialisation and data order, so every method sees the
same runs. See ``lrenv.evaluation`` for the statistics.

Writes into ``--out`` (default ``runs/evaluate``): ``results.md`` (per-task tables and the
aggregate), ``summary.csv`` (one row per task and method), ``tuning.csv`` (every tuning
trial), ``episodes.csv`` (every evaluation episode), ``settings.json``, and ``plots/``
(``<task>.png``: LR schedules and validation-loss curves; ``aggregate.png``: performance
profile and median ranks). Finished populations are cached (``--cache-dir``), so adding a
trained run to a finished comparison only trains the new policy's episodes.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2-core machines: parallelism comes from processes and batching

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lrenv.agents.args import dataclass_parser
from lrenv.baselines import BASELINES
from lrenv.evaluation import (
    DEFAULT_EVAL_SEEDS,
    DEFAULT_POPULATION,
    DEFAULT_TRIALS,
    DEFAULT_TUNE_SEEDS,
    Results,
    compare,
    default_cache_dir,
    write_csv,
)
from lrenv.evaluation.protocol import load_contender

#: ``--quick``: a smoke test of the whole pipeline in seconds (not a meaningful comparison).
QUICK = {"seeds": 3, "tune_seeds": 2, "trials": 2, "epochs": 4}
QUICK_HELP = f"smoke run: {QUICK['seeds']} seeds, {QUICK['tune_seeds']} tuning seeds, {QUICK['trials']} trials, {QUICK['epochs']} epochs (explicit options win)"
TASK_GROUPS = ("all", "train", "heldout")


@dataclass
class Args:
    tasks: list[str] = field(default_factory=lambda: ["all"], metadata={"help": "task names, or a group: all (built-in), train, heldout"})
    runs: list[str] = field(
        default_factory=list,
        metadata={
            "help": "trained run folders (agents.train); default (the shipped policy); formula (the shipped closed form), a formula.json "
            "(format lrenv-formula) or a folder holding one; a fixed-schedule .json (format lrenv-schedule: one task's LR per epoch)"
        },
    )
    seeds: int | None = field(default=None, metadata={"help": f"evaluation seeds (default {DEFAULT_EVAL_SEEDS})"})
    tune_seeds: int | None = field(default=None, metadata={"help": f"tuning seeds per trial (default {DEFAULT_TUNE_SEEDS})"})
    trials: int | None = field(default=None, metadata={"help": f"tuning budget per baseline and task, even (default {DEFAULT_TRIALS})"})
    baselines: list[str] = field(default_factory=lambda: list(BASELINES), metadata={"help": f"baselines: {', '.join(BASELINES)}"})
    epochs: int | None = field(default=None, metadata={"help": "override every task's epoch budget (task_config epochs)"})
    optimal: bool = field(default=True, metadata={"help": "add the analytically optimal schedule where a task has one"})
    quick: bool = field(default=False, metadata={"help": QUICK_HELP})
    out: str = field(default="runs/evaluate", metadata={"help": "output folder"})
    workers: int | None = field(default=None, metadata={"help": "worker processes (default: one per CPU core; 0 runs in this process)"})
    backend: str = field(default="local", metadata={"help": "where populations run: local (worker processes) or ray (Ray tasks; pip install 'lrenv[ray]')"})
    address: str | None = field(default=None, metadata={"help": "Ray cluster address (default: $RAY_ADDRESS, else a local cluster)"})
    cpus_per_population: float = field(default=1.0, metadata={"help": "CPUs each Ray task declares"})
    gpus_per_population: float | None = field(default=None, metadata={"help": "GPUs each Ray task declares (default: 0.25 on CUDA, else 0)"})
    population: int = field(default=DEFAULT_POPULATION, metadata={"help": "most runs trained as one batched population"})
    device: str = field(default="cpu", metadata={"help": "device of the inner runs: cpu, cuda, auto"})
    dtype: str = field(default="float32", metadata={"help": "float32 or float64"})
    cache: bool = field(default=True, metadata={"help": "reuse finished populations from the cache"})
    cache_dir: str | None = field(default=None, metadata={"help": "cache folder (default: the lrenv cache dir's evaluate/)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    track: bool = field(default=False, metadata={"help": "log tables and plots to Weights & Biases (offline unless logged in)"})
    wandb_project: str = field(default="lrenv", metadata={"help": "W&B project"})
    wandb_entity: str | None = field(default=None, metadata={"help": "W&B entity (user or team)"})


def parse_args(argv: list[str] | None = None) -> Args:
    parser = dataclass_parser(Args, "python -m agents.evaluate", __doc__.split("\n\n")[0])
    return Args(**vars(parser.parse_args(argv)))


def resolve_tasks(names: list[str]) -> list[str]:
    """Task names with the groups ``all``, ``train`` and ``heldout`` expanded (order kept, no repeats)."""
    from lrenv import tasks as builtin

    groups = {"all": builtin.BUILTIN_TASKS, "train": builtin.TRAIN_TASKS, "heldout": builtin.HELDOUT_TASKS}
    out: list[str] = []
    for name in names:
        for task in groups.get(name, (name,)):
            if task not in out:
                out.append(task)
    return out


# -- plots ----------------------------------------------------------------------------------


def _style(results: Results, method: str, i: int) -> dict[str, Any]:
    import matplotlib

    kind = results.kinds.get(method, "learned")
    if kind == "learned":
        return {"color": matplotlib.colormaps["Dark2"](i % 8), "linewidth": 2.6, "zorder": 5}
    if kind == "reference":
        return {"color": "black", "linestyle": "--" if method == "optimal" else ":", "linewidth": 2.0, "zorder": 4}
    return {"color": matplotlib.colormaps["tab10"](i % 10), "linewidth": 1.2, "alpha": 0.9}


def plot_task(results: Results, task: str, path: Path) -> None:
    """LR schedule (median over seeds) and validation loss (mean over seeds) of every method on one task."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax_lr, ax_loss = fig.subplots(1, 2)
    for i, method in enumerate(results.methods_on(task)):
        eps = results.evaluation(task, method)
        epochs = eps[0].epochs
        lrs = np.full((len(eps), epochs), np.nan)
        loss = np.full((len(eps), epochs + 1), np.nan)
        for row, e in enumerate(eps):
            lrs[row, : len(e.lrs)] = e.lrs
            loss[row, : len(e.valid_loss)] = e.valid_loss
        style = _style(results, method, i)
        label = method if results.kinds.get(method) == "baseline" else f"{method} ({results.kinds.get(method, 'learned')})"
        with np.errstate(all="ignore"), _quiet():
            ax_lr.plot(np.arange(1, epochs + 1), np.nanmedian(lrs, 0), label=label, **style)
            ax_loss.plot(np.arange(epochs + 1), np.nanmean(np.where(np.isfinite(loss), loss, np.nan), 0), label=label, **style)
    ax_lr.set(yscale="log", xlabel="epoch", ylabel="learning rate", title=f"{task}: LR schedule (median over seeds)")
    ax_loss.set(yscale="log", xlabel="epoch", ylabel="validation loss", title="validation loss (mean over seeds)")
    target = next((e.target for e in results.episodes if e.task == task), None)
    if target is not None:
        ax_loss.axhline(target, color="grey", linewidth=0.8, linestyle="-.", label="target loss")
    ax_loss.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)


def plot_aggregate(results: Results, path: Path) -> None:
    """Performance profile (share of tasks within τ of the best mean loss) and median rank per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = results.aggregate()
    fig = Figure(figsize=(13, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax_prof, ax_rank = fig.subplots(1, 2)
    ratios_all = [r for a in rows for r in a["ratios"].values() if math.isfinite(r)]
    top = max(ratios_all + [1.1]) * 1.1
    taus = np.geomspace(1.0, top, 400)
    for i, a in enumerate(rows):
        ratios = np.array(list(a["ratios"].values()))
        share = [(ratios <= t).mean() for t in taus]
        label = a["method"] if a["tasks"] == len(results.tasks) else f"{a['method']} ({a['tasks']} of {len(results.tasks)} tasks)"
        ax_prof.step(taus, share, where="post", label=label, **_style(results, a["method"], i))
    ax_prof.set(xscale="log", xlabel="τ: mean final valid loss / best mean on the task", ylabel="share of tasks within τ",
                title="performance profile", ylim=(-0.02, 1.02))
    ax_prof.legend(fontsize=7, frameon=False, loc="lower right")
    ordered = sorted(rows, key=lambda a: (a["median_rank"], a["mean_rank"]))
    y = np.arange(len(ordered))
    colors = [_style(results, a["method"], rows.index(a))["color"] for a in ordered]
    ax_rank.barh(y, [a["median_rank"] for a in ordered], color=colors)
    ax_rank.plot([a["mean_rank"] for a in ordered], y, "k|", markersize=12, label="mean rank")
    ax_rank.set_yticks(y, [f"{a['method']} ({a['tasks']})" for a in ordered], fontsize=8)
    ax_rank.invert_yaxis()
    ax_rank.set(xlabel="rank on a task (1 = lowest mean final valid loss)", title="median rank over tasks (bars), mean rank (|)")
    ax_rank.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)


class _quiet:
    """Silence numpy's all-NaN slice warnings (diverged seeds end early)."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


# -- outputs --------------------------------------------------------------------------------


def write_outputs(results: Results, out: Path) -> dict[str, Path]:
    """Write the Markdown table, CSVs, settings and plots; returns their paths by name."""
    out.mkdir(parents=True, exist_ok=True)
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    paths = {
        "results.md": out / "results.md",
        "summary.csv": out / "summary.csv",
        "tuning.csv": out / "tuning.csv",
        "episodes.csv": out / "episodes.csv",
        "settings.json": out / "settings.json",
    }
    paths["results.md"].write_text(results.to_markdown())
    results.write_csv(paths["summary.csv"])
    write_csv(paths["tuning.csv"], results.tuning_rows())
    write_csv(paths["episodes.csv"], results.episode_rows())
    paths["settings.json"].write_text(json.dumps(results.settings, indent=2, default=str))
    for task in results.tasks:
        paths[f"plots/{task}.png"] = plots / f"{task}.png"
        plot_task(results, task, paths[f"plots/{task}.png"])
    paths["plots/aggregate.png"] = plots / "aggregate.png"
    plot_aggregate(results, paths["plots/aggregate.png"])
    return paths


def track(results: Results, paths: dict[str, Path], args: Args, out: Path) -> None:
    """Log the summary and aggregate tables and the plots to a W&B run (offline unless logged in)."""
    try:
        import wandb
    except ImportError as exc:
        raise SystemExit('--track needs wandb: pip install "lrenv[wandb]" (or pip install wandb)') from exc
    from lrenv.tracking import start_wandb

    config = {**results.settings, "runs": args.runs}
    run = start_wandb(config, project=args.wandb_project, entity=args.wandb_entity, name="evaluate", folder=out, tags=["evaluate"]).run
    summary = results.summary()
    columns = list(summary[0])
    aggregate = [{k: v for k, v in a.items() if k != "ratios"} for a in results.aggregate()]
    payload: dict[str, Any] = {
        "summary": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in summary]),
        "aggregate": wandb.Table(columns=list(aggregate[0]), data=[list(a.values()) for a in aggregate]),
    }
    for name, path in paths.items():
        if name.endswith(".png"):
            payload[name.removesuffix(".png")] = wandb.Image(str(path))
    run.log(payload)
    for r in summary:
        run.summary[f"{r['task']}/{r['method']}/valid_loss"] = r["valid_loss_mean"]
    folder = Path(run.dir).parent
    run.finish()
    print(f"W&B: logged to {folder}")


def main(argv: list[str] | None = None) -> Results:
    torch.set_num_threads(1)
    args = parse_args(argv)
    start = time.perf_counter()
    quick = QUICK if args.quick else {}
    seeds = args.seeds if args.seeds is not None else quick.get("seeds", DEFAULT_EVAL_SEEDS)
    tune = args.tune_seeds if args.tune_seeds is not None else quick.get("tune_seeds", DEFAULT_TUNE_SEEDS)
    trials = args.trials if args.trials is not None else quick.get("trials", DEFAULT_TRIALS)
    epochs = args.epochs if args.epochs is not None else quick.get("epochs")
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    task_names = resolve_tasks(args.tasks)
    contenders = [load_contender(run) for run in args.runs]
    cache_dir = (Path(args.cache_dir) if args.cache_dir else default_cache_dir()) if args.cache else None
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    print(
        f"Comparing {len(args.baselines)} tuned baselines"
        + (f" and {len(contenders)} contender(s) ({', '.join(c.name for c in contenders)})" if contenders else "")
        + f" on {', '.join(task_names)}: {trials} trials x {tune} tuning seeds, {seeds} evaluation seeds"
        + (f", {epochs} epochs per run" if epochs else "")
        + (f"; {workers} worker process(es)" if args.backend == "local" else f"; Ray tasks on {address or 'a local cluster'}")
        + (f", cache {cache_dir}" if cache_dir else "")
    )
    results = compare(
        task_names,
        baselines=args.baselines,
        contenders=contenders,
        optimal=args.optimal,
        eval_seeds=seeds,
        tune_seeds=tune,
        trials=trials,
        task_config={"epochs": epochs} if epochs else None,
        device=args.device,
        dtype=args.dtype,
        workers=workers,
        population=args.population,
        cache_dir=cache_dir,
        progress=args.progress,
        backend=args.backend,
        address=address,
        cpus_per_population=args.cpus_per_population,
        gpus_per_population=args.gpus_per_population,
    )
    out = Path(args.out)
    paths = write_outputs(results, out)
    wall = time.perf_counter() - start
    results.settings["wall_time_s"] = round(wall, 1)
    paths["settings.json"].write_text(json.dumps(results.settings, indent=2, default=str))
    print(results.to_markdown())
    print(f"Wrote {', '.join(str(p) for p in paths.values())}")
    print(f"Wall time: {wall:.0f} s")
    if args.track:
        track(results, paths, args, out)
    return results


if __name__ == "__main__":
    from lrenv.registry import UnknownTaskError

    try:
        main()
    except UnknownTaskError as exc:
        sys.exit(f"error: {exc.args[0]}; or a task group: {', '.join(TASK_GROUPS)}")
    except (ValueError, FileNotFoundError) as exc:  # bad input: a clear message, no traceback
        sys.exit(f"error: {exc}")
