"""Distil a learned Ψ (or a law fit) into a closed-form formula by symbolic regression.

Usage::

    python -m agents.distill ars --out runs/distill-ars                  # the shipped RL policy
    python -m agents.distill ars --out runs/distill-ars --ship           # ... and ship it: load_policy("formula")
    python -m agents.distill runs/<run> --out runs/distill-run           # a trained run
    python -m agents.distill runs/surface/law.json --out runs/distill-law   # a law fit (or its law_schedule.json)
    python -m agents.evaluate --tasks train --runs default runs/distill-default/formula.json

The target is ``log(α_i / α_base)``: the policy's LR over the base LR (the optimizer's LR; the
task's ``default_lr`` in the env and the harness), so a formula keeps the policy's contract:
scale from the user, shape from Ψ. The fitted formula ``exp(expr)`` runs as
:class:`lrenv.FormulaScheduler` with a constant base and the policy's factor f (ratio clipped to
[1/f, f]), which is exactly what the multiplier-mode policy sets when the formula matches it.

**DAgger.** Round 0 rolls out the policy itself on its training distribution and records
(observation, the policy's log ratio). Each later round lets the *current formula* drive the
episodes and labels every state it visits with the policy's decision, then refits on all data
gathered so far (Ross et al., 2011). So the formula is fitted on the states it will visit, not
only on the policy's own trajectories, where its small errors would compound unseen.

**Symbolic regression** is Operon (``pyoperon``, CPU, offline): a multi-objective run (R²,
length) whose Pareto front of accuracy against length is reported; the chosen formula is the
most accurate one on held-out episodes with at most ``--max-ops`` operations.

A law fit or any ``lrenv-schedule`` file (a fixed schedule) is distilled from its per-epoch LRs
as a function of ``progress`` alone (no DAgger needed: a schedule does not react to states).

Writes into ``--out``: ``formula.json`` (expression, sympy, LaTeX, variables, domain, fit
metrics), ``pareto.csv``, ``decisions.csv`` (the data), ``pareto.png``, ``check.md`` (formula
against the policy in the harness on the training tasks) and ``summary.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2-core machines: parallelism comes from batching

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
from lrenv.agents.ship_default import ship_formula
from lrenv.env.features import FEATURE_SETS
from lrenv.evaluation import Contender, compare, default_cache_dir, load_run, write_csv
from lrenv.evaluation.protocol import DISTILL_SEED_BASE, SCHEDULE_FORMAT, Job, PolicyRef, Slot, env_run_seed, load_schedule_file
from lrenv.evaluation.runner import run_job
from lrenv.formula import Formula, save_formula
from lrenv.policy import FORMULA_POLICY, FORMULA_POLICY_DIR, LoadedPolicy, load_policy
from lrenv.registry import make_task
from lrenv.run_dir import write_json

#: Operon's function set: what a short LR formula plausibly needs, nothing that overflows easily.
SYMBOLS = "add,sub,mul,div,constant,variable,square,exp,log,sqrt,cos,tanh"
#: Among formulas this close (held-out R²) to the most accurate short one, the shortest is chosen.
R2_TOLERANCE = 0.003
LOG_RATIO_CLIP = 20.0


@dataclass
class Args:
    policy: str = field(
        default="ars", metadata={"help": "ars (the shipped RL policy), default, a run folder, or a law fit / schedule file", "positional": True}
    )
    out: str = field(default="runs/distill", metadata={"help": "output folder"})
    rounds: int = field(default=3, metadata={"help": "DAgger rounds (1: the policy's own trajectories only)"})
    episodes: int = field(default=8, metadata={"help": "episodes per training variant and round"})
    max_ops: int = field(default=10, metadata={"help": "most operations of the chosen formula (exp(...) included)"})
    generations: int = field(default=300, metadata={"help": "Operon generations per fit"})
    population_size: int = field(default=500, metadata={"help": "Operon population size"})
    max_length: int = field(default=25, metadata={"help": "longest expression tree Operon may grow"})
    check_seeds: int = field(default=10, metadata={"help": "evaluation seeds of the formula-vs-policy check (0: no check)"})
    workers: int = field(default=2, metadata={"help": "worker processes of the check"})
    seed: int = field(default=0, metadata={"help": "seed of the episodes and of Operon"})
    quick: bool = field(default=False, metadata={"help": "a smoke run: 2 rounds, 3 episodes, 60 generations, 3 check seeds"})
    ship: bool = field(default=False, metadata={"help": "also copy formula.json into the package as the shipped closed form (load_policy('formula'))"})


def parse_args(argv: list[str] | None = None) -> Args:
    parser = dataclass_parser(Args, "python -m agents.distill", __doc__.split("\n\n")[0])
    args = Args(**vars(parser.parse_args(argv)))
    if args.quick:
        args.rounds, args.episodes, args.generations, args.check_seeds = (
            min(args.rounds, 2),
            min(args.episodes, 3),
            min(args.generations, 60),
            min(args.check_seeds, 3),
        )
    for key in ("rounds", "episodes", "max_ops", "generations", "population_size", "max_length"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    return args


# -- the policy's decisions -----------------------------------------------------------------


def variants(policy: LoadedPolicy) -> list[tuple[str, dict[str, Any]]]:
    """The policy's training distribution: ``(task, task_config overrides)`` per population, or its tasks."""
    populations = policy.config.get("populations")
    if populations:
        return [(p["task"], dict(p.get("task_config") or {})) for p in populations]
    return [(task, dict(policy.config.get("task_config") or {})) for task in policy.tasks]


class DAggerDriver:
    """Drives episodes in the harness and records the expert's decision on every state visited.

    The driving env has a constant base (what a formula's scheduler uses); the expert's LR for
    each observation is computed with the expert's own action mapping (its factor and base
    shape) from the same observation, so its label is the ratio it would have set there.

    Args:
        expert: The policy to distil (multiplier or relative action mode, relative features).
        learner: The formula that drives (``None``: the expert drives).
        base_lr: The episodes' base LR (the task's ``default_lr``).
        lr_range: The task's LR range (the env clips to it).
    """

    def __init__(self, expert: LoadedPolicy, learner: Formula | None, base_lr: float, lr_range: tuple[float, float]) -> None:
        env = expert.env_config
        self.expert = expert
        self.learner = learner
        self.mapping = env.action_mapping()
        self.factor = env.relative_factor
        self.base = float(base_lr)
        self.range = np.asarray(lr_range, dtype=np.float64)
        names = [f.name for f in FEATURE_SETS[env.features]]
        self.progress, self.lr_ratio = names.index("progress"), names.index("lr_ratio")
        self.observations: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        obs = np.atleast_2d(np.asarray(obs, dtype=np.float64))
        n = len(obs)
        action = self.expert.predict(obs, deterministic=True)
        current = self.base * np.exp(obs[:, self.lr_ratio])
        lr = self.mapping.to_lr(action, current, np.tile(self.range, (n, 1)), np.full(n, self.base), obs[:, self.progress])
        log_ratio = np.log(lr / self.base)
        self.observations.append(obs.copy())
        self.targets.append(log_ratio)
        if self.learner is not None:
            with np.errstate(all="ignore"):
                log_ratio = np.log(self.learner(obs))
            log_ratio = np.nan_to_num(log_ratio, nan=-LOG_RATIO_CLIP, posinf=LOG_RATIO_CLIP, neginf=-LOG_RATIO_CLIP)
        return np.clip(log_ratio / math.log(self.factor), -1.0, 1.0).astype(np.float32).reshape(n, 1)


def collect(policy: LoadedPolicy, learner: Formula | None, seeds: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One DAgger round on every training variant: ``(observations, expert log ratios, episode ids)``."""
    driving_env = policy.env_config.replace(base_shape="constant")
    xs, ys, ids = [], [], []
    for v, (task, overrides) in enumerate(variants(policy)):
        env = driving_env.replace(task_config=overrides or None)
        config = make_task(task, **env.task_overrides).config
        driver = DAggerDriver(policy, learner, config.default_lr, config.lr_range)
        slots = [Slot("distill", (), s, "distill", PolicyRef("object", name="distill", obj=driver)) for s in seeds]
        run_job(Job(task, env, slots))
        obs, y = np.concatenate(driver.observations), np.concatenate(driver.targets)
        per_call = len(seeds)
        xs.append(obs)
        ys.append(y)
        ids.append(v * 10_000 + np.tile(np.arange(per_call), len(driver.observations)))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ids)


# -- symbolic regression --------------------------------------------------------------------


@dataclass
class Candidate:
    """One formula of the Pareto front, scored on held-out episodes."""

    formula: Formula
    length: int
    r2_train: float
    r2_heldout: float
    mae_heldout: float


def symbolic_fit(x: np.ndarray, y: np.ndarray, held: np.ndarray, names: list[str], features: str, args: Args) -> list[Candidate]:
    """Operon on ``(x, y)`` without the held-out rows; every Pareto-front model as a formula ``exp(expr)``."""
    try:
        from pyoperon.sklearn import SymbolicRegressor
    except ImportError as exc:
        raise SystemExit('agents.distill needs pyoperon: pip install "lrenv[fit]" (or pip install pyoperon)') from exc

    regressor = SymbolicRegressor(
        allowed_symbols=SYMBOLS,
        objectives=["r2", "length"],
        max_length=args.max_length,
        generations=args.generations,
        population_size=args.population_size,
        max_evaluations=args.generations * args.population_size * 4,
        n_threads=1,
        random_state=args.seed,
    )
    regressor.fit(x[~held], y[~held])
    candidates = []
    for model in regressor.pareto_front_:
        text = regressor.get_model_string(model["tree"], 8, names)
        try:
            formula = Formula(f"exp({text})", features)
        except ValueError:  # an operator the formula grammar does not have: not a candidate
            continue
        candidates.append(
            Candidate(formula, formula.operations, _r2(y[~held], _log_ratio(formula, x[~held], names)), *_scores(formula, x[held], y[held], names))
        )
    return sorted(candidates, key=lambda c: c.length)


def _log_ratio(formula: Formula, x: np.ndarray, names: list[str]) -> np.ndarray:
    values = formula.evaluate({n: x[:, i] for i, n in enumerate(names) if n in formula.variables})
    with np.errstate(all="ignore"):
        out = np.log(np.broadcast_to(values, (len(x),)))
    return np.nan_to_num(out, nan=-LOG_RATIO_CLIP, posinf=LOG_RATIO_CLIP, neginf=-LOG_RATIO_CLIP)


def _r2(y: np.ndarray, predicted: np.ndarray) -> float:
    total = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - predicted) ** 2)) / total if total > 0 else float(np.allclose(y, predicted))


def _scores(formula: Formula, x: np.ndarray, y: np.ndarray, names: list[str]) -> tuple[float, float]:
    if not len(y):
        return math.nan, math.nan
    predicted = _log_ratio(formula, x, names)
    return _r2(y, predicted), float(np.mean(np.abs(y - predicted)))


def choose(candidates: list[Candidate], max_ops: int) -> Candidate:
    """The shortest candidate of at most ``max_ops`` operations whose held-out R² is within
    :data:`R2_TOLERANCE` of the best such candidate's (a shorter formula is easier to read and to trust)."""
    short = [c for c in candidates if c.length <= max_ops]
    if not short:
        raise ValueError(f"no formula of the Pareto front has at most {max_ops} operations; raise --max-ops")
    key = (lambda c: c.r2_heldout) if all(math.isfinite(c.r2_heldout) for c in short) else (lambda c: c.r2_train)
    best = max(key(c) for c in short)
    return min((c for c in short if key(c) >= best - R2_TOLERANCE), key=lambda c: (c.length, -key(c)))


# -- sources --------------------------------------------------------------------------------


def distil_policy(policy: LoadedPolicy, args: Args, log: list[dict[str, Any]]) -> tuple[Candidate, list[Candidate], np.ndarray, np.ndarray]:
    """DAgger rounds on the policy's training distribution; returns the final fit and its data."""
    env = policy.env_config
    if env.features != "relative" or env.action_mode != "multiplier":
        raise ValueError(
            f"{policy.name} acts with features {env.features!r} and action mode {env.action_mode!r}; a formula of α/α_base "
            "is distilled from policies with relative features in multiplier mode (such as the shipped default)"
        )
    names = [f.name for f in FEATURE_SETS[env.features]]
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    helds: list[np.ndarray] = []
    learner: Formula | None = None
    chosen: Candidate | None = None
    candidates: list[Candidate] = []
    for r in range(args.rounds):
        seeds = [DISTILL_SEED_BASE + 1000 * args.seed + r * args.episodes + k for k in range(args.episodes)]
        t = time.perf_counter()
        x, y, ids = collect(policy, learner, [env_run_seed(s) for s in seeds])
        xs.append(x)
        ys.append(y)
        helds.append(ids % 10_000 == args.episodes - 1 if args.episodes > 1 else np.zeros(len(ids), bool))  # one episode per variant held out
        x_all, y_all, held = np.concatenate(xs), np.concatenate(ys), np.concatenate(helds)
        candidates = symbolic_fit(x_all, y_all, held, names, env.features, args)
        chosen = choose(candidates, args.max_ops)
        learner = chosen.formula
        log.append(
            {"round": r, "samples": len(y_all), "driver": "policy" if r == 0 else "formula", "formula": str(chosen.formula),
             "ops": chosen.length, "r2_heldout": chosen.r2_heldout, "seconds": round(time.perf_counter() - t, 1)}
        )  # fmt: skip
        print(f"  round {r}: {len(y_all)} decisions, formula ({chosen.length} ops, held-out R² {chosen.r2_heldout:.3f}): {chosen.formula}", flush=True)
    assert chosen is not None
    return chosen, candidates, np.concatenate(xs), np.concatenate(ys)


def read_schedule(path: Path) -> dict[str, Any]:
    """A fixed schedule: an ``lrenv-schedule`` file, or a law fit (``law.json``) and its optimal schedule."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable JSON file: {exc}") from exc
    if isinstance(data, dict) and data.get("format") == "lrenv-law" and "optimal_lrs" in data:
        return {"format": "lrenv-schedule", "name": f"law-{data['task']}", "task": data["task"], "lrs": data["optimal_lrs"]}
    if not isinstance(data, dict) or data.get("format") != SCHEDULE_FORMAT:
        raise ValueError(f"{path} is neither an lrenv-schedule file nor a law fit (law.json, law_schedule.json or network_schedule.json from agents.surface)")
    schedule = load_schedule_file(path)  # the harness's checks of a schedule file
    ((task, lrs),) = schedule.lrs.items()
    return {**data, "name": schedule.name, "task": task, "lrs": lrs}


def distil_schedule(data: dict[str, Any], args: Args) -> tuple[Candidate, list[Candidate], np.ndarray, np.ndarray, str]:
    """A fixed schedule as ``ratio(progress)`` over the task's ``default_lr``."""
    task = make_task(data["task"])
    lrs = np.asarray(data["lrs"], dtype=np.float64)
    epochs = len(lrs)
    names = [f.name for f in FEATURE_SETS["relative"]]
    x = np.zeros((epochs, len(names)))
    x[:, names.index("progress")] = np.arange(epochs) / epochs
    y = np.log(lrs / task.config.default_lr)
    held = np.zeros(epochs, bool)
    candidates = symbolic_fit(x, y, held, names, "relative", args)
    return choose(candidates, args.max_ops), candidates, x, y, data["task"]


# -- outputs --------------------------------------------------------------------------------


def plot_pareto(candidates: list[Candidate], chosen: Candidate, max_ops: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    lengths = [c.length for c in candidates]
    score = [c.r2_heldout if math.isfinite(c.r2_heldout) else c.r2_train for c in candidates]
    ax.plot(lengths, score, "o-", label="Pareto front (Operon)")
    ax.plot([chosen.length], [chosen.r2_heldout if math.isfinite(chosen.r2_heldout) else chosen.r2_train], "r*", ms=14, label="chosen")
    ax.axvline(max_ops, color="grey", ls=":", label=f"at most {max_ops} operations")
    ax.set_xlabel("operations")
    ax.set_ylabel("R² of log(α/α_base), held-out episodes")
    ax.set_ylim(max(-0.1, min(score) - 0.05), 1.01)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def check(source: Contender, formula_file: Path, tasks: list[str], args: Args) -> tuple[str, list[dict[str, Any]]]:
    """The formula against its source in the harness on ``tasks`` (no baselines): Markdown and rows."""
    contenders = [source, load_run(formula_file)]
    results = compare(
        tasks, baselines=[], contenders=contenders, optimal=False, eval_seeds=args.check_seeds, workers=args.workers, cache_dir=default_cache_dir()
    )
    rows = []
    for task in results.tasks:
        means = {c.name: float(np.mean([e.final_loss for e in results.evaluation(task, c.name)])) for c in contenders}
        row = {"task": task, **{f"{name} final loss": value for name, value in means.items()}}
        source_loss, formula_loss = (means[c.name] for c in contenders)
        row["formula vs source %"] = 100 * (formula_loss - source_loss) / source_loss
        rows.append(row)
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n", rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    torch.set_num_threads(1)
    args = parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log: list[dict[str, Any]] = []
    path = Path(args.policy)
    if path.suffix == ".json" and path.name != "policy.json":
        data = read_schedule(path)
        print(f"Distilling the schedule {data.get('name', path.name)} of {data['task']} ({len(data['lrs'])} epochs)", flush=True)
        chosen, candidates, x, y, task = distil_schedule(data, args)
        tasks, task_configs, source, factor = [task], {task: make_task(task).config}, str(path), 1e6
        domain = {
            "tasks": tasks,
            "variables": {"progress": [0.0, 1.0]},
            "base_lr": "the task's default_lr",
            "note": "a fixed schedule: valid for this task and budget",
        }
        source_contender = Contender(name=str(data.get("name") or path.stem), kind="reference", tasks=(task,), lrs={task: [float(v) for v in data["lrs"]]})
    else:
        policy = load_policy(args.policy)
        print(f"Distilling {policy.name} ({len(variants(policy))} training variants) in {args.rounds} DAgger round(s)", flush=True)
        chosen, candidates, x, y = distil_policy(policy, args, log)
        tasks = policy.tasks
        task_configs = dict(policy.config["task_configs"])
        source, factor = args.policy, policy.env_config.relative_factor
        source_contender = load_run(args.policy)
        names = [f.name for f in FEATURE_SETS["relative"]]
        ranges = {n: [float(np.min(x[:, i])), float(np.max(x[:, i]))] for i, n in enumerate(names) if n in chosen.formula.variables}
        domain = {
            "tasks": tasks,
            "variants": [{"task": t, "task_config": o} for t, o in variants(policy)],
            "optimizers": sorted({make_task(t, **o).config.optimizer for t, o in variants(policy)}),
            "epochs": sorted({make_task(t, **o).config.epochs for t, o in variants(policy)}),
            "variables": ranges,
            "base_lr": "the optimizer's LR (the task's default_lr in the env and the harness)",
        }
    fit = {
        "r2_train": chosen.r2_train,
        "r2_heldout": chosen.r2_heldout,
        "mae_log_ratio_heldout": chosen.mae_heldout,
        "operations": chosen.length,
        "samples": len(y),
        "dagger": log,
    }
    formula_file = save_formula(
        out / "formula.json",
        chosen.formula,
        name=f"formula-{Path(args.policy).stem if path.suffix == '.json' else Path(args.policy).name}",
        relative_factor=factor,
        tasks=tasks,
        task_configs=task_configs,
        domain=domain,
        fit=fit,
        source=source,
    )
    pareto = [
        {"operations": c.length, "r2_train": c.r2_train, "r2_heldout": c.r2_heldout, "mae_heldout": c.mae_heldout, "formula": str(c.formula)}
        for c in candidates
    ]
    write_csv(out / "pareto.csv", pareto)
    names = [f.name for f in FEATURE_SETS["relative"]]
    write_csv(out / "decisions.csv", [{**{n: float(v) for n, v in zip(names, row)}, "log_ratio": float(t)} for row, t in zip(x, y)])
    plot_pareto(candidates, chosen, args.max_ops, out / "pareto.png")
    print(f"Formula ({chosen.length} operations): α/α_base = {chosen.formula.sympy_str()}")
    summary: dict[str, Any] = {"source": source, "formula": str(chosen.formula), "sympy": chosen.formula.sympy_str(), "fit": fit}
    if args.check_seeds:
        check_tasks = [t for t in dict.fromkeys(tasks)]
        table, rows = check(source_contender, formula_file, check_tasks, args)
        (out / "check.md").write_text(table)
        summary["check"] = rows
        print(table)
    if args.ship:
        shipped = ship_formula(formula_file, FORMULA_POLICY_DIR, FORMULA_POLICY)
        print(f"Shipped {formula_file} as {shipped}")
    summary["wall_time_s"] = round(time.perf_counter() - start, 1)
    write_json(out / "summary.json", summary)
    print(f"Wrote {formula_file}, pareto.csv, pareto.png, decisions.csv, summary.json in {out}; {summary['wall_time_s']:.0f} s")
    return summary


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as exc:  # bad input: a clear message, no traceback
        sys.exit(f"error: {exc}")
