import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import lrenv
from lrenv import LREnv, Split, Task, TaskConfig, TaskData
from lrenv.registry import reload_entry_points


class Regression(Task):
    """A task defined in this test file: linear regression with an MLP."""

    default_config = TaskConfig(epochs=4, batch_size=16, optimizer="adam", lr_range=(1e-4, 1.0), default_lr=0.01)

    def data(self) -> TaskData:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(200, 4, generator=g)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.1 * torch.randn(200, 1, generator=g)
        return TaskData(Split(x[:150], y[:150]), Split(x[150:], y[150:]))

    def model(self, generator: torch.Generator) -> nn.Module:
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.3, generator=generator)
        return model

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(output, target)


@pytest.fixture
def registered():
    lrenv.register_task("TestRegression-v0", Regression, epochs=3)
    yield "TestRegression-v0"
    lrenv.unregister_task("TestRegression-v0")


def test_user_task_runs_in_env_through_public_api(registered):
    assert registered in lrenv.list_tasks()
    task = lrenv.make_task(registered)
    assert task.name == registered and task.config.epochs == 3  # registered default applied
    assert lrenv.make_task(registered, epochs=2).config.epochs == 2  # override wins
    env = LREnv(registered, device="cpu")
    env.reset(seed=0)
    total, done = 0.0, False
    while not done:
        _, reward, terminated, truncated, info = env.step(np.array([-0.2], np.float32))
        total += reward
        done = terminated or truncated
    assert info["epoch"] == 3 and total > 0
    lrenv.testing.check_task(registered)


def test_duplicate_registration_is_a_clear_error(registered):
    with pytest.raises(ValueError, match="'TestRegression-v0' is already registered .*Registered: .*MNIST1D-MLP-v0"):
        lrenv.register_task(registered, Regression)


def test_unknown_task_lists_registered_ones():
    with pytest.raises(KeyError, match="unknown task 'Nope-v0'; registered tasks: .*Digits-MLP-v0"):
        lrenv.make_task("Nope-v0")


def test_bad_registration_and_overrides():
    with pytest.raises(TypeError, match="unknown default.*lr; allowed: epochs"):
        lrenv.register_task("Bad-v0", Regression, lr=0.1)
    with pytest.raises(TypeError, match="must be callable"):
        lrenv.register_task("Bad-v0", 42)
    with pytest.raises(TypeError, match="unknown setting.*epocs; allowed: epochs"):
        lrenv.make_task("Digits-MLP-v0", epocs=3)
    lrenv.register_task("NotATask-v0", lambda: "hello")
    try:
        with pytest.raises(TypeError, match="returned str, not an lrenv.Task"):
            lrenv.make_task("NotATask-v0")
    finally:
        lrenv.unregister_task("NotATask-v0")


def test_smoke_test_catches_a_task_that_uses_the_global_rng():
    class Sloppy(Regression):
        def model(self, generator):
            return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))  # torch's default init

    with pytest.raises(AssertionError, match="draw its initialisation only from the generator"):
        lrenv.testing.check_task(Sloppy())


def test_task_from_an_installed_entry_point_package(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "lrenv_demo_tasks").mkdir(parents=True)
    (src / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"
            [project]
            name = "lrenv-demo-tasks"
            version = "0.1"
            [project.entry-points."lrenv.tasks"]
            "DemoLinear-v0" = "lrenv_demo_tasks:DemoLinear"
            """
        )
    )
    (src / "lrenv_demo_tasks" / "__init__.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn
            from lrenv import Split, Task, TaskConfig, TaskData

            class DemoLinear(Task):
                default_config = TaskConfig(epochs=2, batch_size=10, optimizer="sgd", lr_range=(1e-3, 1.0), default_lr=0.1)

                def data(self):
                    g = torch.Generator().manual_seed(0)
                    x = torch.randn(60, 3, generator=g)
                    y = x.sum(1, keepdim=True)
                    return TaskData(Split(x[:40], y[:40]), Split(x[40:], y[40:]))

                def model(self, generator):
                    layer = nn.Linear(3, 1)
                    with torch.no_grad():
                        for p in layer.parameters():
                            p.normal_(0, 0.1, generator=generator)
                    return layer

                def loss(self, output, target):
                    return nn.functional.mse_loss(output, target)
            """
        )
    )
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(site), str(src)],
        check=True,
    )
    monkeypatch.syspath_prepend(str(site))
    reload_entry_points()
    try:
        assert "DemoLinear-v0" in lrenv.list_tasks()
        env = LREnv("DemoLinear-v0", device="cpu")
        env.reset(seed=0)
        _, reward, _, _, info = env.step(np.zeros(1, np.float32))
        assert info["task"] == "DemoLinear-v0" and np.isfinite(reward)
    finally:
        lrenv.unregister_task("DemoLinear-v0")
