"""Env-steps (= inner epochs) per second of N parallel episodes, three ways, side by side.

For each task and N, each in a fresh worker process with one torch thread:

* ``plain x N``: the hand-written tensor loop of ``env_overhead.py``, one run after another;
* ``DummyVecEnv``: SB3's DummyVecEnv of N ``LREnv`` (one process);
* ``SubprocVecEnv``: SB3's SubprocVecEnv of N ``LREnv`` (N processes; only where they fit
  in memory);
* ``BatchedVecEnv``: one population of N runs.

Reported per row: env-steps/s, the ratio to ``plain x N``, peak resident memory (the
worker's, plus its children's for SubprocVecEnv), and the achieved GFLOP/s of MLP tasks
against one large matmul's on the same device. Repetitions are interleaved; the best
rate of the repetitions is kept. On CUDA, N = 512 and 2048 are added.

Usage::

    python benchmarks/vec_throughput.py [--tasks MNIST1D-MLP-v0 Digits-MLP-v0] [--ns 1 8 32 128]
        [--epochs 5] [--repeats 2] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

METHODS = ("plain x N", "DummyVecEnv", "SubprocVecEnv", "BatchedVecEnv")
SUBPROC_MAX_N = 32  # each worker process holds ~300 MB (torch): 128 of them do not fit in 24 GB


def _peak_rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _mlp_flops_per_epoch(task) -> float | None:
    """Multiply-adds x 2 of a Linear stack: forward + 2x backward on train, forward on valid."""
    import torch
    from torch import nn

    model = task.model(torch.Generator().manual_seed(0))
    if not isinstance(model, nn.Sequential) or not all(isinstance(m, (nn.Linear, nn.ReLU, nn.Tanh)) for m in model):
        return None
    macs = sum(m.in_features * m.out_features for m in model if isinstance(m, nn.Linear))
    data = task.data()
    return 2 * macs * (3 * len(data.train) + len(data.valid))


def _matmul_gflops(device: str) -> float:
    import torch

    a = torch.randn(2048, 2048, device=device)
    for _ in range(2):
        a @ a
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start, reps = time.perf_counter(), 5 if device == "cpu" else 50
    for _ in range(reps):
        a @ a
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return reps * 2 * 2048**3 / (time.perf_counter() - start) / 1e9


def worker(method: str, task_name: str, n: int, epochs: int, device: str) -> dict:
    """One measurement in this (fresh) process; returns its numbers."""
    import numpy as np
    import torch
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    import lrenv
    from lrenv.env.vec_env import BatchedVecEnv

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from env_overhead import plain_loop

    torch.set_num_threads(1)
    task = lrenv.make_task(task_name, epochs=epochs)
    task.data()
    kwargs = {"device": device, "task_config": {"epochs": epochs}}
    action = np.zeros((n, 1), dtype=np.float32)
    children_mb = 0.0

    def drive(venv) -> None:
        venv.seed(0)
        venv.reset()
        for _ in range(epochs):
            venv.step(action)

    if method == "plain x N":
        plain_loop(lrenv.make_task(task, epochs=1), device, 0)  # warm-up
        start = time.perf_counter()
        for k in range(n):
            plain_loop(task, device, k)
    else:
        if method == "DummyVecEnv":
            venv = DummyVecEnv([lambda: lrenv.LREnv(task_name, **kwargs) for _ in range(n)])
        elif method == "SubprocVecEnv":
            venv = SubprocVecEnv([lambda: _one_thread_env(task_name, kwargs) for _ in range(n)])
        else:
            venv = BatchedVecEnv(task_name, n, **kwargs)
        venv.seed(0)
        venv.reset()
        venv.step(action)  # warm-up (first epoch, lazy allocations)
        start = time.perf_counter()
        drive(venv)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if method == "SubprocVecEnv":
        children_mb = sum(_peak_rss_mb(p.pid) for p in venv.processes)
    if method != "plain x N":
        venv.close()
    flops = _mlp_flops_per_epoch(task)
    steps = n * epochs
    return {
        "steps_per_s": steps / seconds,
        "peak_mb": _peak_rss_mb() + children_mb,
        "gflops": None if flops is None else flops * steps / seconds / 1e9,
        "batched": method == "BatchedVecEnv" and bool(venv.engine.batched),
    }


def _one_thread_env(task_name: str, kwargs: dict):
    import torch

    import lrenv

    torch.set_num_threads(1)
    return lrenv.LREnv(task_name, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["MNIST1D-MLP-v0", "Digits-MLP-v0"])
    parser.add_argument("--ns", nargs="+", type=int, default=None, help="population sizes (default 1 8 32 128, + 512 2048 on CUDA)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per episode (env-steps per env)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repetitions; the best is kept")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(**json.loads(args.worker))))
        return
    import torch

    import lrenv

    device = str(lrenv.engine.resolve_device(args.device))
    ns = args.ns or ([1, 8, 32, 128] + ([512, 2048] if device.startswith("cuda") else []))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    torch.set_num_threads(1)
    peak_matmul = _matmul_gflops(device)
    print(f"device {device}, torch {torch.__version__}, one thread per process, {args.epochs} epochs per episode, "
          f"best of {args.repeats}; 2048x2048 matmul: {peak_matmul:.1f} GFLOP/s")
    for task_name in args.tasks:
        lrenv.make_task(task_name).data()  # create the data cache before the workers start
        results: dict[tuple[str, int], list[dict]] = {}
        jobs = [(m, n) for n in ns for m in args.methods if not (m == "SubprocVecEnv" and n > SUBPROC_MAX_N)]
        for r in range(args.repeats):
            for method, n in jobs[r % len(jobs):] + jobs[: r % len(jobs)]:
                spec = json.dumps({"method": method, "task_name": task_name, "n": n, "epochs": args.epochs, "device": device})
                out = subprocess.run([sys.executable, __file__, "--worker", spec], env=env, capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"  {method} N={n} failed: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}")
                    continue
                results.setdefault((method, n), []).append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"\n{task_name}")
        print(f"{'N':>5} {'method':<22}{'env-steps/s':>13}{'x plain':>9}{'x Dummy':>9}{'peak MB':>10}{'GFLOP/s':>9}{'% matmul':>9}")
        for n in ns:
            best = {m: max(rs, key=lambda r: r["steps_per_s"]) for (m, nn_), rs in results.items() if nn_ == n}
            plain = best.get("plain x N", {}).get("steps_per_s")
            dummy = best.get("DummyVecEnv", {}).get("steps_per_s")
            for method in args.methods:
                if method not in best:
                    continue
                r = best[method]
                rate = r["steps_per_s"]
                note = "" if method != "BatchedVecEnv" or r["batched"] else " (loop)"
                gf = r["gflops"]
                print(
                    f"{n:>5} {method + note:<22}{rate:>13.1f}{rate / plain if plain else float('nan'):>9.2f}"
                    f"{rate / dummy if dummy else float('nan'):>9.2f}{r['peak_mb']:>10.0f}"
                    f"{gf if gf is not None else float('nan'):>9.1f}{100 * gf / peak_matmul if gf else float('nan'):>8.0f}%"
                )


if __name__ == "__main__":
    main()
