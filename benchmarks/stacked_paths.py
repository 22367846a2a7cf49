"""Run-epochs/s of one population trained three ways, side by side in one process.

For each task, N runs (default 32) train with LR 3e-3 on

* ``hand-written``: the engine's default, the stacked forward and backward of
  :mod:`lrenv.engine.stacked_layers` (for tasks whose model is a chain of supported layers);
* ``vmap + autograd``: the same stacked population through ``torch.func.functional_call``
  under ``vmap`` (an ``nn.GRU`` through its unrolled stand-in);
* ``loop``: one module and torch optimizer per run, one after another (4 runs, rate per run).

The methods take turns (``--repeats`` rounds of ``--epochs`` epochs each, after one warm-up
epoch); the best round of each is kept, and ratios are to the loop. After the rounds the
hand-written and vmap populations, which saw the same seeds and LRs, must agree on their
validation losses (float32 rounding apart).

Usage::

    python benchmarks/stacked_paths.py [--tasks MNIST1D-CNN-v0 TextGRU-v1 MNIST1D-MLP-v0] [--n 32]
        [--epochs 2] [--repeats 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from lrenv import Engine, make_task

LR = 3e-3
LOOP_RUNS = 4


def _population(task, method: str, n: int, device: str) -> Engine:
    runs = LOOP_RUNS if method == "loop" else n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the loop fallback notice of unbatchable models
        engine = Engine(task, n_runs=runs, device=device, batched=method != "loop")
    if method != "loop" and not engine.batched:
        raise SystemExit(f"{task.name}: the engine does not stack this task ({engine.fallback_reason})")
    if method == "vmap + autograd":
        engine.trainer.use_autograd()
    engine.reset(list(range(runs)))
    engine.run_epoch(np.full(runs, LR))  # warm-up: first epoch, lazy allocations
    return engine


def measure(task_name: str, n: int, epochs: int, repeats: int, device: str) -> None:
    task = make_task(task_name)
    engines = {method: _population(task, method, n, device) for method in ("hand-written", "vmap + autograd", "loop")}
    if not engines["hand-written"].trainer.hand_written:
        del engines["hand-written"]
    best = dict.fromkeys(engines, 0.0)
    for _ in range(repeats):
        for method, engine in engines.items():
            start = time.perf_counter()
            for _ in range(epochs):
                engine.run_epoch(np.full(engine.n_runs, LR))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best[method] = max(best[method], engine.n_runs * epochs / (time.perf_counter() - start))
    print(f"\n{task_name}, N = {n}, {device}")
    print(f"  {'method':18s} {'run-epochs/s':>13s} {'x loop':>7s}")
    for method, rate in best.items():
        print(f"  {method:18s} {rate:13.1f} {rate / best['loop']:7.2f}")
    if "hand-written" in engines:
        hand, auto = engines["hand-written"].evaluate()[0], engines["vmap + autograd"].evaluate()[0]
        print(f"  validation loss, hand-written vs vmap: largest relative difference {np.max(np.abs(hand / auto - 1)):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["MNIST1D-CNN-v0", "TextGRU-v1", "MNIST1D-MLP-v0"])
    parser.add_argument("--n", type=int, default=32, help="population size")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per round")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; the best is kept")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.tasks:
        measure(name, args.n, args.epochs, args.repeats, args.device)


if __name__ == "__main__":
    main()
