"""Run one LREnv episode per built-in task under a few fixed schedules and print a table.

The quickstart's main job until agents can be trained: it shows the environment end to end
(tasks, engine, observations, rewards, divergence handling) and how much the schedule
matters. Each schedule is driven through the env's own action mapping, on the same seeds,
so every schedule sees the same initialisation and data order.

Usage::

    python -m agents.demo [--tasks NAME ...] [--seeds 2] [--device auto]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable

import numpy as np

Schedule = Callable[[int, int, float], float]  # (epoch index 0..T-1, T, default LR) -> LR


def constant(t: int, total: int, lr: float) -> float:
    return lr


def constant_low(t: int, total: int, lr: float) -> float:
    return lr / 10


def cosine(t: int, total: int, lr: float) -> float:
    return 0.5 * lr * (1 + math.cos(math.pi * t / total))


def step_decay(t: int, total: int, lr: float) -> float:
    return lr * (0.1 ** (t >= total // 2)) * (0.1 ** (t >= 3 * total // 4))


def too_high(t: int, total: int, lr: float) -> float:
    return math.inf  # clipped to the top of the task's LR range: shows divergence handling


SCHEDULES: dict[str, Schedule] = {
    "constant (default LR)": constant,
    "constant (default / 10)": constant_low,
    "cosine from default LR": cosine,
    "step decay x0.1 at 1/2, 3/4": step_decay,
    "top of LR range": too_high,
}


def run_episode(env, lrs: Callable[[int], float], seed: int) -> dict[str, float]:
    """Drive one episode with LR ``lrs(t)`` for epoch t; returns its summary."""
    _, info = env.reset(seed=seed)
    cfg = env.unwrapped.task.config
    low, high = cfg.lr_range
    total, done, t = 0.0, False, 0
    while not done:
        lr = min(max(lrs(t), low), high)
        action = env.unwrapped.actions.to_action(np.array([lr]), np.array([info["lr"]]), np.array([cfg.lr_range]))[0]
        _, reward, terminated, truncated, info = env.step(action)
        total += reward
        done, t = terminated or truncated, t + 1
    return {
        "valid_loss": info["valid_loss"],
        "accuracy": info.get("valid_accuracy", math.nan),
        "return": total,
        "epochs": info["epoch"],
        "diverged": info["diverged"],
    }


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    import lrenv
    from tasks import BUILTIN_TASKS

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=None, help="task names (default: all built-in tasks)")
    parser.add_argument("--seeds", type=int, default=2, help="episodes per (task, schedule), seeds 0..N-1")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args()
    names = args.tasks or list(BUILTIN_TASKS)
    print(f"lrenv {lrenv.__version__}: one episode per seed, {args.seeds} seed(s), device {lrenv.engine.resolve_device(args.device)}")
    header = f"{'task':<18} {'schedule':<28} {'final valid loss':>18} {'valid acc':>10} {'return':>8} {'epochs':>7} {'diverged':>9}"
    print(header)
    print("-" * len(header))
    start = time.perf_counter()
    for name in names:
        env = lrenv.LREnv(name, device=args.device)
        schedules: dict[str, Callable[[int], float]] = {
            label: (lambda t, s=s, T=env.task.config.epochs, lr=env.task.config.default_lr: s(t, T, lr))
            for label, s in SCHEDULES.items()
        }
        if hasattr(env.task, "optimal_schedule"):
            optimal = env.task.optimal_schedule()
            schedules["optimal (analytical)"] = lambda t, o=optimal: o[t]
        for label, schedule in schedules.items():
            rows = [run_episode(env, schedule, seed) for seed in range(args.seeds)]
            kept = [r for r in rows if not r["diverged"]]  # a diverged run's loss is meaningless
            loss = np.array([r["valid_loss"] for r in kept])
            acc = np.array([r["accuracy"] for r in kept])
            loss_text = f"{loss.mean():.4g} ± {loss.std():.2g}" if kept else "-"
            acc_text = "" if not kept or np.isnan(acc).all() else f"{np.nanmean(acc):.3f}"
            print(
                f"{name:<18} {label:<28} {loss_text:>18} {acc_text:>10} {np.mean([r['return'] for r in rows]):>8.3f} "
                f"{np.mean([r['epochs'] for r in rows]):>7.1f} {sum(r['diverged'] for r in rows):>6}/{len(rows)}"
            )
        env.close()
    print(
        f"done in {time.perf_counter() - start:.0f} s. Final valid loss: mean ± std over the seeds that did not "
        "diverge. Return = log(L_0 / L_T) on validation loss, -2 for a diverged run."
    )


if __name__ == "__main__":
    main()
