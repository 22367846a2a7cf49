"""Shared test setup: one thread (2-core machine), offline W&B, a tiny task."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(1)

from lrenv import ClassificationTask, Split, Task, TaskConfig, TaskData, classification_metrics  # noqa: E402


@torch.no_grad()
def uniform_init(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Initialise every parameter U(-0.3, 0.3) from ``generator`` only."""
    for p in model.parameters():
        p.uniform_(-0.3, 0.3, generator=generator)
    return model


class TinyClassifier(Task):
    """A 3-class problem on 8 Gaussian features: an epoch takes about a millisecond."""

    default_config = TaskConfig(
        epochs=5, batch_size=32, optimizer="momentum", lr_range=(1e-3, 30.0), default_lr=0.1, target_loss=0.3
    )

    def data(self) -> TaskData:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(600, 8, generator=g)
        y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
        return TaskData(Split(x[:400], y[:400]), Split(x[400:500], y[400:500]), Split(x[500:], y[500:]))

    def model(self, generator: torch.Generator) -> nn.Module:
        return uniform_init(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)), generator)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output, target)

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return classification_metrics(output, target)


class TinyDeepClassifier(ClassificationTask):
    """TinyClassifier's problem with the built-in cross-entropy and a deeper Tanh/ReLU stack.

    Its 16-wide and 3-wide linear layers take both forward layouts of the hand-written MLP.
    """

    default_config = TinyClassifier.default_config
    data = TinyClassifier.data

    def model(self, generator: torch.Generator) -> nn.Module:
        layers = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
        return uniform_init(layers, generator)


@pytest.fixture(autouse=True)
def _isolate_wandb(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.getbasetemp() / "wandb"
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(root / var.lower()))


@pytest.fixture
def tiny_task() -> TinyClassifier:
    task = TinyClassifier()
    task.name = "Tiny-v0"
    return task


class TinyConvClassifier(ClassificationTask):
    """TinyClassifier's problem as 1-channel signals through two Conv1d layers (hand-written backward).

    The convolutions cover padding, stride, dilation and a missing bias; Tanh and ReLU,
    Flatten and Unflatten sit between them.
    """

    default_config = TinyClassifier.default_config
    data = TinyClassifier.data

    def model(self, generator: torch.Generator) -> nn.Module:
        layers = nn.Sequential(
            nn.Unflatten(1, (1, 8)),
            nn.Conv1d(1, 4, kernel_size=3, stride=2, padding=1),
            nn.Tanh(),
            nn.Conv1d(4, 3, kernel_size=2, dilation=2, bias=False),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(6, 3),
        )
        return uniform_init(layers, generator)


class TinyCharModel(ClassificationTask):
    """Next-id prediction on short id sequences: Embedding -> two-layer GRU -> per-position Linear.

    A custom module whose forward is a chain (``out, _ = self.gru(...)``): the hand-written
    stacked backward covers it, GRU included.
    """

    default_config = TinyClassifier.default_config

    def data(self) -> TaskData:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 5, (600, 7), generator=g)
        ids[:, 1::2] = (ids[:, 0::2][:, : ids[:, 1::2].shape[1]] * 2 + 1) % 5  # partly predictable
        x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
        return TaskData(Split(x[:400], y[:400]), Split(x[400:500], y[400:500]), Split(x[500:], y[500:]))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(5, 4)
            self.gru = nn.GRU(4, 6, num_layers=2, batch_first=True)
            self.head = nn.Linear(6, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.gru(self.embed(x))
            return self.head(out)

    def model(self, generator: torch.Generator) -> nn.Module:
        return uniform_init(self.Net(), generator)


class TinyCustomModel(TinyClassifier):
    """Same problem, but a custom module with a sine activation, which the hand-written
    backward does not cover: trained through vmap + autograd."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = nn.Linear(8, 16)
            self.out = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.sin(self.hidden(x)))

    def model(self, generator: torch.Generator) -> nn.Module:
        return uniform_init(self.Net(), generator)


class TinyGRU(TinyClassifier):
    """A two-layer GRU sequence model: batched through the engine's unrolled stand-in for nn.GRU."""

    rnn_type = nn.GRU

    class Net(nn.Module):
        def __init__(self, rnn_type: type[nn.RNNBase]) -> None:
            super().__init__()
            self.rnn = rnn_type(2, 8, num_layers=2, batch_first=True)
            self.out = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, _ = self.rnn(x.view(len(x), 4, 2))
            return self.out(h[:, -1])

    def model(self, generator: torch.Generator) -> nn.Module:
        return uniform_init(self.Net(self.rnn_type), generator)


class TinyLSTM(TinyGRU):
    """The same with nn.LSTM, which torch.func.vmap cannot batch: the loop fallback."""

    rnn_type = nn.LSTM


@pytest.fixture(autouse=True)
def reference_cache(tmp_path, monkeypatch):
    """agents.train's tuned-baseline reference caches its episodes here, never in the user's cache."""
    from lrenv.agents import train

    folder = tmp_path / "evaluate-cache"
    monkeypatch.setattr(train, "default_cache_dir", lambda: folder)
    return folder
