"""How much does LREnv cost over training the same model by hand?

Measures, side by side in one process on the same task and epochs, seconds per epoch of:

* ``LREnv``: reset + one env step per epoch at the task's default LR (the engine's loop, the
  observation, reward and info);
* ``plain loop``: a hand-written tensor loop (data on the device, one randperm per epoch,
  torch optimizer, validation loss and accuracy each epoch, one host read per epoch);
* ``DataLoader loop``: the usual TensorDataset + DataLoader(shuffle=True) loop with a
  ``loss.item()`` per batch.

Trials are interleaved (A B C, B C A, ...) so machine noise hits all three alike; the median
is reported. Usage::

    python benchmarks/env_overhead.py [--task MNIST1D-MLP-v0] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

import lrenv
from lrenv.engine.optim import make_optimizer


def lrenv_episode(task: lrenv.Task, device: str, seed: int) -> None:
    env = lrenv.LREnv(task, device=device)
    action = env.actions.to_action(np.array([task.config.default_lr]), np.array([task.config.default_lr]), np.array([task.config.lr_range]))[0]
    env.reset(seed=seed)
    done = False
    while not done:
        _, _, terminated, truncated, _ = env.step(action)
        done = terminated or truncated


def plain_loop(task: lrenv.Task, device: str, seed: int) -> None:
    cfg, data = task.config, task.data()
    x, y = data.train.x.to(device), data.train.y.to(device)
    vx, vy = data.valid.x.to(device), data.valid.y.to(device)
    model = task.model(torch.Generator().manual_seed(seed)).to(device)
    opt = make_optimizer(list(model.parameters()), cfg, cfg.default_lr)
    order = torch.Generator(device=device).manual_seed(seed)
    for _ in range(cfg.epochs):
        model.train()
        total = torch.zeros((), device=device)
        for idx in torch.randperm(len(x), generator=order, device=device).split(cfg.batch_size):
            loss = task.loss(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        model.eval()
        with torch.no_grad():
            out = model(vx)
            row = torch.stack([total, task.loss(out, vy), *task.metrics(out, vy).values()])
        row.tolist()  # the one host read of the epoch


def dataloader_loop(task: lrenv.Task, device: str, seed: int) -> None:
    cfg, data = task.config, task.data()
    torch.manual_seed(seed)
    train = DataLoader(TensorDataset(data.train.x, data.train.y), batch_size=cfg.batch_size, shuffle=True)
    valid = DataLoader(TensorDataset(data.valid.x, data.valid.y), batch_size=cfg.batch_size)
    model = task.model(torch.Generator().manual_seed(seed)).to(device)
    opt = make_optimizer(list(model.parameters()), cfg, cfg.default_lr)
    for _ in range(cfg.epochs):
        model.train()
        total = 0.0
        for xb, yb in train:
            loss = task.loss(model(xb.to(device)), yb.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        model.eval()
        with torch.no_grad():
            for xb, yb in valid:
                out = model(xb.to(device))
                task.loss(out, yb.to(device)).item()
                for value in task.metrics(out, yb.to(device)).values():
                    value.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="MNIST1D-MLP-v0", help="registered task to train")
    parser.add_argument("--repeats", type=int, default=5, help="episodes per method (interleaved)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per episode (task budget by default)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the project's setting)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = str(lrenv.engine.resolve_device(args.device))
    task = lrenv.make_task(args.task, **({"epochs": args.epochs} if args.epochs else {}))
    task.data()  # generate/cache the data outside the timings
    methods = {"LREnv": lrenv_episode, "plain loop": plain_loop, "DataLoader loop": dataloader_loop}
    for fn in methods.values():  # warm-up: allocator, kernels, lazy imports
        fn(make_short(task), device, 0)
    times: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for r in range(args.repeats):
        for name in names[r % 3 :] + names[: r % 3]:
            start = time.perf_counter()
            methods[name](task, device, r)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) / task.config.epochs)
    base = statistics.median(times["plain loop"])
    print(f"task {task.name}, {task.config.epochs} epochs x {args.repeats} repeats, device {device}, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}")
    print(f"{'method':<18}{'s/epoch (median)':>18}{'min':>10}{'max':>10}{'x plain loop':>14}")
    for name in names:
        t = times[name]
        print(f"{name:<18}{statistics.median(t):>18.4f}{min(t):>10.4f}{max(t):>10.4f}{statistics.median(t) / base:>14.3f}")


def make_short(task: lrenv.Task) -> lrenv.Task:
    return lrenv.make_task(task, epochs=min(2, task.config.epochs))


if __name__ == "__main__":
    main()
