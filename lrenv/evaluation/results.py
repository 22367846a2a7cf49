"""The statistics of a comparison, and its tables: per task and method, and across tasks.

What is reported per (task, method), over the evaluation seeds (:meth:`Results.summary`):

- *accurate*: final validation loss and accuracy (mean ± sample std); the paired
  difference of the final validation loss to the **best tuned baseline** (the baseline
  with the best tuning score; ``schedule_free``, which changes the optimizer, is a reference
  and not eligible) with its standard error; the win rate (share of seeds with a lower final
  loss than the best baseline, ties half); the rank of the mean final loss among all methods.
- *fast*: epochs to reach the task's ``target_loss`` on validation (median over seeds,
  ``inf`` when most never reach it) and the share that reach it.
- *reliable*: the share of seeds that reach the task's **acceptance level** — the test
  loss at the end is at most the task's ``target_loss`` (tasks without a test split, such
  as the noisy quadratic, whose validation loss is its exact risk, use the validation
  loss) — and the divergence rate.

A diverged run counts as the env counts it: its final validation loss is
``L_0 · e^penalty`` (return ``-penalty``), its accuracy the last one measured (0 if not a
number), and it is never accepted. :meth:`Results.aggregate` ranks methods across tasks
(median and mean rank) and gives the ratios of a performance profile (mean final loss /
best mean final loss per task).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lrenv.evaluation.runner import Episode

_TASK_HEADER = "| rank | method | tuned | final valid loss | Δ vs ★ | win | valid acc | to target | accepted | diverged |"


@dataclass
class Results:
    """Episodes of a comparison and its statistics.

    Attributes:
        episodes: Every episode, tuning and evaluation.
        tuned: ``{(task, baseline): {"params", "score", "trials"}}``.
        tasks: Task names, in order.
        methods: Method names, in order (baselines, contenders, references).
        kinds: ``{method: "baseline" | "learned" | "reference"}``.
        settings: The protocol (seeds, trials, ...).
    """

    episodes: list[Episode]
    tuned: dict[tuple[str, str], dict[str, Any]]
    tasks: list[str]
    methods: list[str]
    kinds: dict[str, str]
    settings: dict[str, Any]

    def evaluation(self, task: str, method: str) -> list[Episode]:
        """The evaluation episodes of a method on a task, in seed order."""
        return sorted((e for e in self.episodes if e.role == "eval" and e.task == task and e.method == method), key=lambda e: e.seed)

    def methods_on(self, task: str) -> list[str]:
        present = {e.method for e in self.episodes if e.role == "eval" and e.task == task}
        return [m for m in self.methods if m in present]

    def best_baseline(self, task: str) -> str | None:
        """The baseline (kind ``"baseline"``) with the best tuning score on ``task``."""
        candidates = [m for m in self.methods if self.kinds.get(m) == "baseline" and (task, m) in self.tuned]
        if not candidates:
            return None
        return max(candidates, key=lambda m: self.tuned[(task, m)]["score"])

    def _held_out(self, task: str, method: str) -> bool | None:
        """For a learned policy whose training tasks are known: whether ``task`` was not one of them."""
        seen = self.settings.get("trained_on", {}).get(method)
        return None if seen is None else task not in seen

    def summary(self) -> list[dict[str, Any]]:
        """One row per (task, method) with the statistics described in the module docstring."""
        rows = []
        for task in self.tasks:
            methods = self.methods_on(task)
            best = self.best_baseline(task)
            best_by_seed = {e.seed: e.final_loss for e in self.evaluation(task, best)} if best else {}
            means = {m: float(np.mean([e.final_loss for e in self.evaluation(task, m)])) for m in methods}
            ranks = _ranks(means)
            for method in methods:
                eps = self.evaluation(task, method)
                loss = np.array([e.final_loss for e in eps])
                acc = np.array([e.final_accuracy for e in eps])
                paired = [(e.final_loss, best_by_seed[e.seed]) for e in eps if e.seed in best_by_seed]
                diff = np.array([a - b for a, b in paired])
                to_target = np.array([e.epochs_to_target for e in eps])
                tuned = self.tuned.get((task, method))
                rows.append(
                    {
                        "task": task,
                        "method": method,
                        "kind": self.kinds.get(method, "learned"),
                        "params": _format_params(tuned["params"]) if tuned else "",
                        "tuning_score": tuned["score"] if tuned else math.nan,
                        "best_baseline": best or "",
                        "seeds": len(eps),
                        "valid_loss_mean": float(loss.mean()),
                        "valid_loss_std": _std(loss),
                        "delta_mean": float(diff.mean()) if len(diff) else math.nan,
                        "delta_se": _std(diff) / math.sqrt(len(diff)) if len(diff) > 1 else math.nan,
                        "delta_pct": 100 * float(diff.mean()) / float(np.mean([b for _, b in paired])) if len(diff) else math.nan,
                        "win_rate": float(np.mean((diff < 0) + 0.5 * (diff == 0))) if len(diff) and method != best else math.nan,
                        "valid_accuracy_mean": _nanmean(acc),
                        "valid_accuracy_std": _std(acc[np.isfinite(acc)]) if np.isfinite(acc).any() else math.nan,
                        "test_loss_mean": _nanmean(np.array([e.test_loss for e in eps])),
                        "test_accuracy_mean": _nanmean(np.array([e.test_accuracy for e in eps])),
                        "target_epochs_median": float(np.median(to_target)) if not np.isnan(to_target).all() else math.nan,
                        "target_reached": float(np.mean(np.isfinite(to_target))) if not np.isnan(to_target).all() else math.nan,
                        "accepted": _nanmean(np.array([e.accepted for e in eps])),
                        "diverged": float(np.mean([e.diverged for e in eps])),
                        "rank": ranks[method],
                        "held_out": self._held_out(task, method),
                    }
                )
        return rows

    def aggregate(self) -> list[dict[str, Any]]:
        """One row per method across tasks: median and mean rank, performance-profile ratios, wins."""
        rows = self.summary()
        out = []
        for method in self.methods:
            mine = [r for r in rows if r["method"] == method]
            if not mine:
                continue
            ratios = {}
            for r in mine:
                best_mean = min(x["valid_loss_mean"] for x in rows if x["task"] == r["task"])
                ratios[r["task"]] = r["valid_loss_mean"] / best_mean
            wins = [r["win_rate"] for r in mine if not math.isnan(r["win_rate"])]
            out.append(
                {
                    "method": method,
                    "kind": self.kinds.get(method, "learned"),
                    "tasks": len(mine),
                    "median_rank": float(np.median([r["rank"] for r in mine])),
                    "mean_rank": float(np.mean([r["rank"] for r in mine])),
                    "mean_win_rate": float(np.mean(wins)) if wins else math.nan,
                    "ratios": ratios,
                }
            )
        return out

    def to_markdown(self) -> str:
        """Per-task tables and the aggregate, as Markdown."""
        rows = self.summary()
        s = self.settings
        lines = [
            "# Schedule comparison",
            "",
            f"Tasks: {', '.join(self.tasks)}. Evaluation seeds: {len(s['eval_seeds'])} "
            f"({s['eval_seeds'][0]}..{s['eval_seeds'][-1]}); tuning: {s['trials']} trials per baseline on "
            f"{len(s['tune_seeds'])} seeds ({', '.join(map(str, s['tune_seeds']))}). "
            + (f"Task overrides: {s['task_config']}. " if s["task_config"] else "")
            + "Final validation loss: mean ± std over the evaluation seeds; Δ: paired difference to the best tuned "
            "baseline (★) ± its standard error; win: share of seeds beating it; to target: median epochs to the "
            "task's target validation loss (reached share); accepted: test loss ≤ target.",
        ]
        for task in self.tasks:
            task_rows = sorted((r for r in rows if r["task"] == task), key=lambda r: (r["rank"], r["method"]))
            if not task_rows:
                continue
            lines += ["", f"## {task}", "", _TASK_HEADER, "|---:|---|---|---|---|---:|---|---|---:|---:|"]
            for r in task_rows:
                star = " ★" if r["method"] == r["best_baseline"] else ""
                seen = {True: ", held-out task", False: ", trained on this task", None: ""}[r["held_out"]]
                kind = "" if r["kind"] == "baseline" else f" ({r['kind']}{seen})"
                lines.append(
                    f"| {_fmt_rank(r['rank'])} | {r['method']}{star}{kind} | {r['params']} | "
                    f"{_g(r['valid_loss_mean'])} ± {_g(r['valid_loss_std'], 2)} | {_delta(r)} | {_pct(r['win_rate'])} | "
                    f"{_acc_text(r)} | {_target(r)} | {_pct(r['accepted'])} | {_pct(r['diverged'])} |"
                )
        lines += ["", "## All tasks", "", "| method | tasks | median rank | mean rank | mean win rate vs ★ |", "|---|---:|---:|---:|---:|"]
        for a in sorted(self.aggregate(), key=lambda a: (a["median_rank"], a["mean_rank"])):
            kind = "" if a["kind"] == "baseline" else f" ({a['kind']})"
            lines.append(f"| {a['method']}{kind} | {a['tasks']} | {_fmt_rank(a['median_rank'])} | {a['mean_rank']:.2f} | {_pct(a['mean_win_rate'])} |")
        return "\n".join(lines) + "\n"

    def write_csv(self, path: str | os.PathLike[str]) -> None:
        """The summary rows as CSV."""
        write_csv(path, self.summary())

    def tuning_rows(self) -> list[dict[str, Any]]:
        """Every tuning trial: task, baseline, parameters, mean score, and whether it was chosen."""
        rows = []
        for (task, method), t in self.tuned.items():
            for params, score in t["trials"].items():
                rows.append({"task": task, "method": method, "params": _format_params(dict(params)), "score": score, "chosen": dict(params) == t["params"]})
        return rows

    def episode_rows(self) -> list[dict[str, Any]]:
        """Every evaluation episode's end: one row per (task, method, seed)."""
        return [
            {
                "task": e.task,
                "method": e.method,
                "seed": e.seed,
                "run_seed": e.run_seed,
                "final_valid_loss": e.final_loss,
                "final_valid_accuracy": e.final_accuracy,
                "test_loss": e.test_loss,
                "test_accuracy": e.test_accuracy,
                "epochs_to_target": e.epochs_to_target,
                "diverged": e.diverged,
                "lrs": " ".join(f"{v:.4g}" for v in e.lrs),
            }
            for e in self.episodes
            if e.role == "eval"
        ]


def write_csv(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    """``rows`` (dicts with the same keys) as CSV; floats with 6 significant digits."""
    if not rows:
        Path(path).write_text("")
        return
    columns = [c for c in rows[0] if c != "ratios"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items() if k in columns})


def _ranks(means: dict[str, float]) -> dict[str, float]:
    """Rank 1 = lowest mean loss; ties share their average rank."""
    values = sorted(means.values())
    return {m: float(np.mean([i + 1 for i, v in enumerate(values) if v == x])) for m, x in means.items()}


def _std(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if len(x) > 1 else math.nan


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else math.nan


def _format_params(params: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in params.items())


def _g(x: float, digits: int = 4) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _pct(x: float) -> str:
    return "—" if math.isnan(x) else f"{100 * x:.0f}%"


def _fmt_rank(x: float) -> str:
    return f"{x:g}"


def _delta(r: dict[str, Any]) -> str:
    if r["method"] == r["best_baseline"] or math.isnan(r["delta_mean"]):
        return "—"
    se = "" if math.isnan(r["delta_se"]) else f" ± {r['delta_se']:.2g}"
    return f"{r['delta_mean']:+.3g}{se} ({r['delta_pct']:+.1f}%)"


def _acc_text(r: dict[str, Any]) -> str:
    if math.isnan(r["valid_accuracy_mean"]):
        return "—"
    return f"{r['valid_accuracy_mean']:.3f} ± {_g(r['valid_accuracy_std'], 2)}"


def _target(r: dict[str, Any]) -> str:
    if math.isnan(r["target_reached"]):
        return "—"
    med = r["target_epochs_median"]
    return f"{'never' if math.isinf(med) else f'{med:g}'} ({100 * r['target_reached']:.0f}%)"
