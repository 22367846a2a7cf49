"""The quickstart's main job: train a small agent, then compare it and the shipped Ψs with tuned baselines.

1. ``agents.train``: PPO with the shipped defaults (``agents/configs/ppo.yaml``) learns a
   learning-rate schedule on ``MNIST1D-MLP-v0`` from a batched population of inner runs.
2. ``agents.evaluate``: the trained policy, the policies shipped with lrenv (no tuning,
   starting from each task's default LR: ``"default"``, the default Ψ, a formula meta-learned by
   ``agents.evolve``; ``"ars"``, the policy trained with RL; ``"formula"``, its closed form) and
   every classic schedule of ``lrenv.baselines`` (each tuned on its own seeds with the same
   trial budget) run on the same 10 evaluation seeds, on the training task and on a held-out
   task neither policy saw (``TextGRU-v1``: another architecture, optimizer and data
   modality); a Markdown table, a CSV and plots land in the output folder.

About 5–10 minutes on a 2-core CPU. Usage::

    python -m agents.demo [--task MNIST1D-MLP-v0] [--heldout TextGRU-v1 ...] [--timesteps N] [--out runs/demo]

The evaluation follows ``python -m agents.evaluate``'s full protocol (6 trials per baseline
on 5 tuning seeds, 10 evaluation seeds). ``--heldout`` with no task evaluates on the training
task only.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2-core machines: torch's default threads slow RL ~10x

import argparse
import time
from pathlib import Path

from lrenv.agents import evaluate, train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="MNIST1D-MLP-v0", help="training and evaluation task")
    parser.add_argument("--heldout", nargs="*", default=["TextGRU-v1"], help="held-out tasks to evaluate the policy on too")
    parser.add_argument("--timesteps", type=int, default=None, help="PPO budget (default: the shipped config's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the agent's training")
    parser.add_argument("--out", default="runs/demo", help="folder of the comparison's tables and plots")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    print(f"== 1/2 training PPO on {args.task}", flush=True)
    train_argv = ["--algo", "ppo", "--task", args.task, "--seed", str(args.seed)]
    if args.timesteps:
        train_argv += ["--timesteps", str(args.timesteps)]
    run_dir = train.main(train_argv)
    tasks = [args.task, *(t for t in args.heldout if t != args.task)]
    print(f"== 2/2 comparing it with tuned baselines on {', '.join(tasks)} ({time.perf_counter() - start:.0f} s so far)", flush=True)
    evaluate.main(["--tasks", *tasks, "--runs", str(run_dir), "default", "ars", "formula", "--out", args.out])
    out = Path(args.out)
    print(f"\ndone in {time.perf_counter() - start:.0f} s. Trained run: {run_dir}")
    print(f"Comparison: {out / 'results.md'}, {out / 'summary.csv'}, plots in {out / 'plots'}")


if __name__ == "__main__":
    main()
