"""One smoke test for any task: ``lrenv.testing.check_task(task)``.

Use it in your own test suite after registering a task::

    def test_my_task():
        lrenv.testing.check_task("MyTask-v0")

It checks the task contract (data, deterministic initialisation from the generator only,
loss and metrics), that a few epochs at ``default_lr`` lower the validation loss, and that
the task runs in :class:`lrenv.LREnv` under Gymnasium's environment checker.
Failures raise AssertionError with a message that says what to fix.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lrenv.engine import Engine
from lrenv.registry import make_task
from lrenv.task import Split, Task, TaskData


def check_task(task: str | Task, *, device: str = "cpu", epochs: int = 3, check_learning: bool = True) -> None:
    """Run the smoke test on a task (a registered name or an instance).

    Args:
        task: The task.
        device: Where to train it.
        epochs: Epochs of the learning check and of the env check (capped at the budget).
        check_learning: Also require that ``epochs`` epochs at ``default_lr`` lower the
            validation loss.
    """
    task = make_task(task)
    name = task.name or type(task).__name__
    _check_data(task, name)
    _check_model(task, name)
    _check_loss(task, name)
    epochs = max(1, min(epochs, task.config.epochs))
    if check_learning:
        _check_learning(task, name, device, epochs)
    _check_env(task, device, epochs)


def _check_data(task: Task, name: str) -> None:
    data = task.data()
    assert isinstance(data, TaskData), f"{name}.data() must return lrenv.TaskData, got {type(data).__name__}"
    for split_name in ("train", "valid", "test"):
        split = getattr(data, split_name)
        if split is None and split_name == "test":
            continue
        assert isinstance(split, Split), f"{name}.data().{split_name} must be an lrenv.Split"
        assert isinstance(split.x, torch.Tensor) and isinstance(split.y, torch.Tensor), (
            f"{name}.data().{split_name} must hold tensors"
        )
        if split.x.is_floating_point():
            assert torch.isfinite(split.x).all(), f"{name}.data().{split_name}.x has non-finite values"
    again = task.data()
    assert torch.equal(data.train.x, again.train.x), f"{name}.data() must return the same data on every call"


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _check_model(task: Task, name: str) -> None:
    def weights(seed: int, global_seed: int) -> list[torch.Tensor]:
        torch.manual_seed(global_seed)  # the result must not depend on torch's global RNG
        return _params(task.model(torch.Generator().manual_seed(seed)))

    with torch.random.fork_rng(devices=[]):
        a, b, c = weights(1, 100), weights(1, 200), weights(2, 100)
    assert a, f"{name}.model() has no parameters to train"
    assert all(torch.equal(x, y) for x, y in zip(a, b)), (
        f"{name}.model(generator) must draw its initialisation only from the generator: the same "
        "seed gave different weights under another global seed (re-initialise every parameter "
        "with generator=..., nn.Module constructors use torch's global RNG)"
    )
    assert any(not torch.equal(x, y) for x, y in zip(a, c)), f"{name}.model(): different seeds gave identical weights"


def _check_loss(task: Task, name: str) -> None:
    data = task.data()
    model = task.model(torch.Generator().manual_seed(0))
    n = min(len(data.train), task.config.batch_size)
    out = model(data.train.x[:n])
    loss = task.loss(out, data.train.y[:n])
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0, f"{name}.loss() must return a scalar tensor"
    assert math.isfinite(loss.item()) and loss.item() > 0, f"{name}.loss() must be finite and positive, got {loss.item()}"
    loss.backward()
    for key, value in task.metrics(out.detach(), data.train.y[:n]).items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0, f"{name}.metrics()[{key!r}] must be a scalar tensor"


def _check_learning(task: Task, name: str, device: str, epochs: int) -> None:
    engine = Engine(task, n_runs=1, device=device)
    start = engine.reset([0])
    stats = start
    for _ in range(epochs):
        stats = engine.run_epoch([task.config.default_lr])
    assert not stats.diverged[0], f"{name} diverged at its default_lr {task.config.default_lr}"
    assert stats.valid_loss[0] < start.valid_loss[0], (
        f"{name}: {epochs} epochs at default_lr={task.config.default_lr} did not lower the validation loss "
        f"({start.valid_loss[0]:.4g} -> {stats.valid_loss[0]:.4g}); pick a default_lr that trains"
    )


def _check_env(task: Task, device: str, epochs: int) -> None:
    from gymnasium.utils.env_checker import check_env

    from lrenv.env import LREnv

    env = LREnv(task, device=device, task_config={"epochs": epochs})
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    done = False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(np.zeros(1, dtype=np.float32))
        assert np.isfinite(obs).all() and math.isfinite(reward), "the env produced a non-finite observation or reward"
        done = terminated or truncated
