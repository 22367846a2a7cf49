"""Score hand-set formulas on a distribution's variants, on seeds of their own: agents/PSI.md's probes.

    python -m agents.probe --config agents/configs/psi.yaml --formulas probes.json
    python -m agents.probe --config agents/configs/psi.yaml --formulas probes.json --variants 0 4 --seeds 8

``probes.json`` maps a name to a formula: an expression over ``--features`` (see
``lrenv.Formula``), or a ``formula.json``, its folder, or a shipped name (``default``), which
acts with its own features and box. Every formula plays the same episodes, paired: each variant
of ``--config`` at the harness's base LRs (the task's ``default_lr``) and set off as the config
sets them, on the run seeds from 90,000 (``--seeds`` of them). ``agents.evaluate`` does not
use those seeds, nor do ``agents.evolve``'s final sets (70,500 + 1,000·seed on) or its searches
with ``--seed`` 0–2 (a search with ``--seed 3`` trains on 90,000 on), so a probe can set a
constant by hand without spending the seeds that decide whether it ships (the shipping rule,
README).

It prints, per variant and formula, the mean final validation loss and return (log(L_0/L_T))
at the base LRs and set off, then each formula's mean return over both and every variant (the
currency of ``agents.evolve``), its difference from the first formula's with the standard error
over the run seeds (the seeds are the replicates: each plays every variant in both modes), and
how many of its runs overshot (an epoch whose validation loss is more than twice the best
before it; rare and large, they are what a probe of a few seeds measures worst). With
``--out`` it writes the per-variant numbers to a CSV.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lrenv.agents.args import dataclass_parser
from lrenv.agents.evolve import read_distribution, read_formula_arg, run_episodes
from lrenv.evaluation import write_csv
from lrenv.evaluation.executor import ProcessPool
from lrenv.evaluation.protocol import env_run_seed
from lrenv.formula import Formula
from lrenv.policy import SHIPPED_POLICIES

#: A run overshoots when an epoch's validation loss is more than this many times the best before it.
OVERSHOOT = 2.0


def overshot(valid_loss: list[float]) -> bool:
    """Whether some epoch's validation loss is more than ``OVERSHOOT`` times the best before it (a non-finite loss is)."""
    losses = np.asarray(valid_loss, dtype=float)
    losses = np.where(np.isfinite(losses), losses, np.inf)
    best = np.minimum.accumulate(losses)
    return bool((losses[1:] > OVERSHOOT * best[:-1]).any())


def paired_difference(mine: np.ndarray, first: np.ndarray) -> tuple[float, float]:
    """Mean and standard error over run seeds of ``mine − first``, each ``[episodes, seeds]`` of returns."""
    per_seed = (mine - first).mean(0)
    se = per_seed.std(ddof=1) / np.sqrt(len(per_seed)) if len(per_seed) > 1 else float("nan")
    return float(per_seed.mean()), float(se)


#: The first probe seed: past the harness's seeds and those of ``agents.evolve --seed`` 0-2 (60,000 + 10,000·seed on).
PROBE_SEED_BASE = 90_000


@dataclass
class Args:
    formulas: str = field(default="", metadata={"help": "a JSON object: name -> an expression, a formula.json (or its folder) or a shipped name"})
    config: str = field(default="agents/configs/psi.yaml", metadata={"help": "the distribution: a YAML of populations and env settings"})
    variants: list[str] = field(default_factory=list, metadata={"help": "indices of the config's populations to play (default: all)"})
    seeds: int = field(default=8, metadata={"help": "run seeds per variant and mode, from 90,000"})
    features: str = field(default="relative_peak", metadata={"help": "the feature set the expressions read"})
    workers: int = field(default=2, metadata={"help": "worker processes (0: in this process)"})
    out: str = field(default="", metadata={"help": "a CSV to write the per-variant numbers to (default: none)"})


def parse_args(argv: list[str] | None = None) -> Args:
    args = Args(**vars(dataclass_parser(Args, "python -m agents.probe", __doc__.split("\n")[0]).parse_args(argv)))
    if not args.formulas:
        raise ValueError("--formulas is required: a JSON file of names to expressions or formula files")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    if not all(v.isdigit() for v in args.variants):
        raise ValueError(f"--variants {args.variants}: expected indices of the config's populations (0, 1, ...)")
    return args


def read_formulas(path: str, features: str) -> dict[str, tuple[str, str, float | None]]:
    """Each probe's (expression, features, box); a ``ValueError`` naming the entry that does not parse."""
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--formulas {path!r}: {exc}") from None
    if not isinstance(entries, dict) or not entries or not all(isinstance(v, str) for v in entries.values()):
        raise ValueError(f"--formulas {path!r}: expected a JSON object of names to strings (expressions or formula files)")
    formulas = {}
    for name, text in entries.items():
        if text in SHIPPED_POLICIES or text.endswith(".json") or ("(" not in text and Path(text).is_dir()):
            saved = read_formula_arg(f"--formulas {name!r}:", text)
            formulas[name] = (saved.formula.expression, saved.formula.features, saved.relative_factor)
            continue
        try:
            Formula(text, features=features)
        except ValueError as exc:
            raise ValueError(f"--formulas {name!r}: {exc}") from None
        formulas[name] = (text, features, None)
    return formulas


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    formulas = read_formulas(args.formulas, args.features)
    variants, env = read_distribution(args.config)
    chosen = [int(v) for v in args.variants] or list(range(len(variants)))
    bad = [i for i in chosen if i >= len(variants)]
    if bad:
        raise ValueError(f"--variants {bad}: the config has {len(variants)} populations, 0..{len(variants) - 1}")
    seeds = [env_run_seed(PROBE_SEED_BASE + k) for k in range(args.seeds)]
    torch.set_num_threads(1)
    pool = ProcessPool(args.workers) if args.workers > 0 else None
    # formulas that read the same features in the same box play in one population per variant
    # and mode, as a search's candidates do: the same batches, so their differences are theirs
    groups: dict[tuple[str, float], list[str]] = {}
    for name, (_, features, box) in formulas.items():
        groups.setdefault((features, env.relative_factor if box is None else box), []).append(name)
    episodes: dict[tuple[str, str], list] = {}  # (formula, mode) -> [V][seeds]
    try:
        for (features, box), names in groups.items():
            own = env.replace(features=features, relative_factor=box)
            for mode, mode_env in (("base", own.replace(base_lr_spread=1.0)), ("set_off", own)):
                played = run_episodes([formulas[n][0] for n in names], [variants[i] for i in chosen], mode_env, seeds, pool)
                for c, name in enumerate(names):
                    episodes[(name, mode)] = [per_variant[c] for per_variant in played]
    finally:
        if pool is not None:
            pool.close()
    rows = []
    width = max(map(len, formulas))
    for v, i in enumerate(chosen):
        task, overrides = variants[i]
        print(f"## {i} {task} {overrides or ''}")
        for name in formulas:
            row: dict[str, Any] = {"variant": i, "task": task, "task_config": json.dumps(overrides), "formula": name}
            for mode in ("base", "set_off"):
                mine = episodes[(name, mode)][v]
                row[f"valid_loss_{mode}"] = float(np.mean([e.valid_loss[-1] for e in mine]))
                row[f"return_{mode}"] = float(np.mean([e.score for e in mine]))
                row[f"overshoots_{mode}"] = sum(e.diverged or overshot(e.valid_loss) for e in mine)
            rows.append(row)
            base = f"valid {row['valid_loss_base']:.4f} return {row['return_base']:.4f}"
            off = f"valid {row['valid_loss_set_off']:.4f} return {row['return_set_off']:.4f}"
            print(f"  {name:{width}s} base: {base} | set off: {off}")
    # [variant x mode, seed] returns per formula: the seeds are paired across formulas
    returns = {name: np.array([[e.score for e in episodes[(name, mode)][v]] for v in range(len(chosen)) for mode in ("base", "set_off")]) for name in formulas}
    first = next(iter(formulas))
    for name in formulas:
        runs = sum(r["overshoots_base"] + r["overshoots_set_off"] for r in rows if r["formula"] == name)
        versus = ""
        if name != first:
            diff, se = paired_difference(returns[name], returns[first])
            versus = f"  {diff:+.4f} ± {se:.4f} against {first} over {args.seeds} seeds;"
        print(f"MEAN {name:{width}s} {returns[name].mean():.4f}{versus}  overshoots {runs} of {returns[name].size} runs")
    if args.out:
        write_csv(args.out, rows)
        print(f"Wrote {args.out}")
    return rows


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as exc:  # bad input: a clear message, no traceback
        sys.exit(f"error: {exc}")
