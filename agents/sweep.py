"""Sweep agent hyperparameters, env settings and seeds with Ray Tune, stopping weak trials early (ASHA).

Usage::

    python -m agents.sweep --algo ppo --task Digits-MLP-v0 \\
        --space hyperparams.learning_rate=loguniform:1e-4:3e-3 hyperparams.n_epochs=choice:5,10 seed=choice:0,1,2 \\
        --samples 8 --rungs 3 --rung-timesteps 10240 --out runs/sweep
    RAY_ADDRESS=HEAD_IP:6379 python -m agents.sweep ... --track                 # on a cluster; W&B per trial

Each trial is an ``agents.train`` run with its own run folder (``OUT/runs/``), trained rung by
rung: ``--rung-timesteps`` at a time, resumed from its checkpoint, with a validation score
(``eval_freq``: fixed validation episodes, see ``agents/train.py``) reported to Tune after each
rung. ASHA (``ray.tune.schedulers.ASHAScheduler``, ``time_attr`` = timesteps) stops the trials
whose score trails at a rung. ``--track`` logs every trial's run to Weights & Biases.

``--space`` takes ``KEY=KIND:ARGS``: ``KEY`` is a config key as for ``agents.train --set``
(dotted, e.g. ``env.relative_factor``) or ``seed``; ``KIND`` is ``choice`` (comma-separated
YAML values), ``uniform`` or ``loguniform`` (``LOW:HIGH``), or ``randint`` (``LOW:HIGH``,
high exclusive).

Writes ``OUT/results.csv`` and ``OUT/results.md`` (one row per trial, best first: its
settings, the timesteps it reached, its last and best validation return and its run folder),
and Tune's own records in ``OUT/tune/``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2-core machines: parallelism comes from trials
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # trials run where the sweep was started

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from lrenv.agents.config import parse_value

KINDS = ("choice", "uniform", "loguniform", "randint")
METRIC = "validation_return"


def parse_space(specs: list[str]) -> dict[str, Any]:
    """Tune search-space objects from ``KEY=KIND:ARGS`` specs.

    Raises:
        ValueError: A spec is malformed or names an unknown kind.
    """
    from ray import tune

    space: dict[str, Any] = {}
    for spec in specs:
        key, sep, rest = spec.partition("=")
        kind, _, args = rest.partition(":")
        if not sep or not key or kind not in KINDS or not args:
            example = "hyperparams.learning_rate=loguniform:1e-4:1e-2"
            raise ValueError(f"--space {spec!r}: expected KEY=KIND:ARGS with KIND one of {', '.join(KINDS)} (e.g. {example})")
        if kind == "choice":
            space[key] = tune.choice([parse_value(v) for v in args.split(",")])
            continue
        bounds = args.split(":")
        if len(bounds) != 2:
            raise ValueError(f"--space {spec!r}: {kind} takes LOW:HIGH")
        low, high = (float(parse_value(b)) for b in bounds)
        if not low < high or (kind == "loguniform" and low <= 0):
            raise ValueError(f"--space {spec!r}: needs LOW < HIGH{' and LOW > 0' if kind == 'loguniform' else ''}")
        space[key] = {"uniform": tune.uniform, "loguniform": tune.loguniform}[kind](low, high) if kind != "randint" else tune.randint(int(low), int(high))
    return space


def run_trial(params: dict[str, Any], base_argv: list[str], fixed: list[str], rungs: int, rung_timesteps: int, runs_dir: str) -> None:
    """One Tune trial: an agents.train run, resumed rung by rung, reporting its validation score after each."""
    from ray import tune

    from lrenv.agents import train

    # one --set list: the sweep's fixed overrides, a validation score per rung, then the trial's draws
    assignments = [*fixed, f"eval_freq={rung_timesteps}"] + [f"{key}={json.dumps(value)}" for key, value in params.items() if key != "seed"]
    run_dir: Path | None = None
    for rung in range(1, rungs + 1):
        timesteps = rung * rung_timesteps
        if run_dir is None:
            argv = [*base_argv, "--seed", str(params.get("seed", 0)), "--runs-dir", runs_dir, "--timesteps", str(timesteps), "--no-progress-bar"]
            run_dir = train.main([*argv, "--set", *assignments])
        else:
            run_dir = train.main(["--resume", str(run_dir), "--timesteps", str(timesteps), "--no-progress-bar"])
        records = [json.loads(line) for line in (run_dir / "validation.jsonl").read_text().splitlines()]
        tune.report({METRIC: records[-1]["mean_return"], "best_return": max(r["mean_return"] for r in records), "timesteps": timesteps,
                     "run_dir": str(run_dir)})


def write_results(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """``results.csv`` and ``results.md``: one row per trial, best validation return first."""
    rows = sorted(rows, key=lambda r: -r[METRIC])
    columns = list(rows[0]) if rows else []
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in columns) + " |" for r in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return [out / "results.csv", out / "results.md"]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", default=None, help="algorithm (default: the config's, else ppo)")
    parser.add_argument("--task", nargs="+", default=["MNIST1D-MLP-v0"], help="task(s) of every trial")
    parser.add_argument("--config", default=None, help="a config file for every trial (as agents.train --config)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="fixed config overrides of every trial")
    parser.add_argument("--space", nargs="+", required=True, metavar="KEY=KIND:ARGS", help="the search space (see the module doc)")
    parser.add_argument("--samples", type=int, default=8, help="trials drawn from the space")
    parser.add_argument("--rungs", type=int, default=3, help="training chunks per trial; ASHA may stop a trial after any of them")
    parser.add_argument("--rung-timesteps", type=int, default=10240, help="timesteps per rung")
    parser.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA keeps 1 / this of the trials at each rung")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs each trial declares")
    parser.add_argument("--address", default=None, help="Ray cluster (default: $RAY_ADDRESS, else a local one)")
    parser.add_argument("--track", action="store_true", help="log every trial to Weights & Biases")
    parser.add_argument("--out", default="runs/sweep", help="output folder")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.rungs < 1 or args.rung_timesteps < 1 or args.reduction_factor <= 1:
        parser.error("--samples, --rungs and --rung-timesteps must be >= 1 and --reduction-factor > 1")
    try:
        import ray
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
    except ImportError:
        parser.error('agents.sweep needs Ray Tune: pip install "lrenv[ray]"')
    try:
        space = parse_space(args.space)
    except ValueError as exc:
        parser.error(str(exc))

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base_argv = ["--task", *args.task] + (["--algo", args.algo] if args.algo else []) + (["--config", str(Path(args.config).resolve())] if args.config else [])
    base_argv += ["--track"] if args.track else []
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address=address, include_dashboard=False if address is None else None, log_to_driver=False)
    trainable = tune.with_parameters(
        run_trial, base_argv=base_argv, fixed=list(args.set), rungs=args.rungs, rung_timesteps=args.rung_timesteps, runs_dir=str(out / "runs")
    )
    scheduler = ASHAScheduler(time_attr="timesteps", max_t=args.rungs * args.rung_timesteps, grace_period=args.rung_timesteps,
                              reduction_factor=args.reduction_factor)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": args.cpus_per_trial}),
        param_space=space,
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler, num_samples=args.samples),
        run_config=tune.RunConfig(name="sweep", storage_path=str(out / "tune"), verbose=0),
    )
    grid = tuner.fit()
    rows = []
    for result in grid:
        if result.metrics is None or METRIC not in result.metrics:
            continue  # a trial that failed before its first rung (its error is in OUT/tune)
        m = result.metrics
        rows.append({**{k: result.config[k] for k in space}, "timesteps": m["timesteps"], METRIC: m[METRIC], "best_return": m["best_return"],
                     "stopped_early": m["timesteps"] < args.rungs * args.rung_timesteps, "run_dir": m["run_dir"]})
    paths = write_results(rows, out)
    print(Path(paths[1]).read_text())
    failed = len(grid) - len(rows)
    print(f"{len(rows)} trials" + (f", {failed} failed (see {out / 'tune'})" if failed else "") + f"; wrote {', '.join(map(str, paths))}")
    return rows


if __name__ == "__main__":
    main()
