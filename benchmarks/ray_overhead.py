"""What does Ray cost? The same comparison on local worker processes and as Ray tasks, side by side.

Runs one :func:`lrenv.evaluation.compare` workload (no cache) with ``--cpus`` local worker
processes, then on a local Ray cluster of ``--cpus`` CPUs: once including the cluster's
start, once more on the running cluster. It prints the wall times, Ray's overhead against
the local workers, whether the results are identical, and the resident memory of the Ray
worker processes (per worker) and of the whole cluster. Repeat with ``--rounds`` to see
the noise of the machine.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/ray_overhead.py [--cpus 2] [--tasks NoisyQuadratic-v0 Digits-MLP-v0] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from lrenv.evaluation import compare  # noqa: E402


def ray_memory_mb() -> tuple[list[float], float]:
    """RSS of each Ray worker process and of every Ray process (MB)."""
    import psutil

    workers, total = [], 0.0
    for proc in psutil.process_iter(["name", "cmdline", "memory_info"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "ray" not in cmd and not (proc.info["name"] or "").startswith("ray"):
            continue
        rss = proc.info["memory_info"].rss / 2**20 if proc.info["memory_info"] else 0.0
        total += rss
        if "default_worker.py" in cmd or (proc.info["name"] or "").startswith("ray::"):
            workers.append(rss)
    return workers, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--tasks", nargs="+", default=["NoisyQuadratic-v0", "MNIST1D-MLP-v0", "Digits-MLP-v0"])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    protocol = dict(trials=args.trials, tune_seeds=3, eval_seeds=args.seeds)

    import ray

    rows = []
    for r in range(args.rounds):
        start = time.perf_counter()
        local = compare(args.tasks, workers=args.cpus, **protocol)
        local_s = time.perf_counter() - start
        start = time.perf_counter()
        cold = compare(args.tasks, backend="ray", workers=args.cpus, **protocol)  # starts and stops its own cluster
        cold_s = time.perf_counter() - start
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        start = time.perf_counter()
        warm = compare(args.tasks, backend="ray", **protocol)
        warm_s = time.perf_counter() - start
        workers, total = ray_memory_mb()
        ray.shutdown()
        same = local.summary() == cold.summary() == warm.summary() or all(
            str(a) == str(b) == str(c) for a, b, c in zip(local.summary(), cold.summary(), warm.summary())
        )
        rows.append((r, local_s, cold_s, warm_s, same, workers, total))

    episodes = len(local.episodes)
    print(f"{episodes} episodes of {', '.join(args.tasks)} ({args.trials} trials, {args.seeds} evaluation seeds), {args.cpus} CPUs")
    print(f"{'round':>5} {'local s':>8} {'Ray s (with start)':>19} {'Ray s (running)':>16} {'overhead':>9} {'same results':>13}")
    for r, local_s, cold_s, warm_s, same, _, _ in rows:
        print(f"{r:>5} {local_s:>8.1f} {cold_s:>19.1f} {warm_s:>16.1f} {100 * (warm_s / local_s - 1):>+8.1f}% {str(same):>13}")
    _, _, _, _, _, workers, total = rows[-1]
    per = ", ".join(f"{w:.0f}" for w in workers)
    print(f"Ray worker RSS after a run: {per} MB ({len(workers)} workers); every Ray process together: {total:.0f} MB")


if __name__ == "__main__":
    main()
