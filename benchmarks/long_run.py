"""Does a long run leak? 10,000 episodes through one BatchedVecEnv, with memory, files and threads.

Runs ``--episodes`` episodes of ``--task`` through a ``BatchedVecEnv`` of ``--n-envs`` envs
with random actions (autoreset, as SB3 drives it) and samples, at every tenth of the way,
the resident memory (RSS), the open file descriptors and the threads of this process. It
prints the samples, the RSS growth from the first sample (taken after a warm-up of one
tenth, when allocator pools and caches are full) to the last, and the growth of file
handles and threads per 1,000 episodes. A leak shows as a steady climb; noise as a few MB
up and down.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/long_run.py [--episodes 10000] [--task Digits-MLP-v0] [--n-envs 32] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch

import lrenv


def rss_mb() -> float:
    """Resident memory of this process, MB (Linux ``/proc``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def os_threads() -> int:
    """Threads of the process as the OS counts them (torch's and BLAS's pools included)."""
    return len(os.listdir("/proc/self/task"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--task", default="Digits-MLP-v0")
    parser.add_argument("--n-envs", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per episode (TaskConfig override)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    venv = lrenv.BatchedVecEnv(args.task, args.n_envs, seed=0, device=args.device, task_config={"epochs": args.epochs})
    rng = np.random.default_rng(0)
    venv.reset()
    done_episodes, start = 0, time.perf_counter()
    samples = [(0, 0.0, rss_mb(), open_files(), os_threads(), threading.active_count())]
    marks = [round(args.episodes * k / 10) for k in range(1, 11)]
    while done_episodes < args.episodes:
        _, rewards, dones, _ = venv.step(rng.uniform(-1, 1, (args.n_envs, 1)).astype(np.float32))
        if not np.isfinite(rewards).all():
            raise RuntimeError("a reward was not finite")
        done_episodes += int(dones.sum())
        while marks and done_episodes >= marks[0]:
            samples.append((marks.pop(0), time.perf_counter() - start, rss_mb(), open_files(), os_threads(), threading.active_count()))
    venv.close()

    print(f"{args.episodes} episodes of {args.task} ({args.epochs} epochs each) through BatchedVecEnv(n_envs={args.n_envs}), random actions")
    print(f"{'episodes':>9} {'seconds':>8} {'RSS MB':>8} {'open fds':>9} {'OS threads':>11} {'py threads':>11}")
    for episodes, seconds, rss, fds, threads, py_threads in samples:
        print(f"{episodes:>9} {seconds:>8.1f} {rss:>8.1f} {fds:>9} {threads:>11} {py_threads:>11}")
    first, last = samples[1], samples[-1]
    per_k = 1000 / max(1, last[0] - first[0])
    print(
        f"RSS at the start {samples[0][2]:.1f} MB, after warm-up ({first[0]} episodes) {first[2]:.1f} MB, "
        f"at the end {last[2]:.1f} MB: {last[2] - first[2]:+.1f} MB since the warm-up "
        f"({100 * (last[2] - first[2]) / first[2]:+.1f} %); open files {(last[3] - first[3]) * per_k:+.2f} and OS threads "
        f"{(last[4] - first[4]) * per_k:+.2f} per 1,000 episodes"
    )


if __name__ == "__main__":
    main()
