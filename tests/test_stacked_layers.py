"""The hand-written stacked forward and backward equal each run's own module and autograd."""

import copy

import pytest
import torch
from torch import nn

from lrenv.engine.stacked_layers import StackedSequential

N_RUNS = 3


class _GRUChain(nn.Module):
    """A custom module whose forward is a chain: embedding, GRU output sequence, head."""

    def __init__(self, gru: nn.GRU) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, gru.input_size)
        self.gru = gru
        self.head = nn.Linear(gru.hidden_size, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.embed(x))
        return self.head(torch.tanh(out))


class _TimeFirstGRU(_GRUChain):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.embed(x))  # x is [L, B]: the GRU is not batch_first
        return self.head(out)


class _UnsqueezeConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 3, kernel_size=4, stride=3, padding=2, dilation=2)
        self.head = nn.Linear(3 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x.unsqueeze(-2))).flatten(1))


def _cases():
    ids = torch.randint(0, 7, (5, 6), generator=torch.Generator().manual_seed(0))
    signals = torch.randn(5, 12, generator=torch.Generator().manual_seed(1))
    return {
        "gru, two layers, batch_first": (_GRUChain(nn.GRU(4, 5, num_layers=2, batch_first=True)), ids),
        "gru, no bias, time first": (_TimeFirstGRU(nn.GRU(4, 5, bias=False)), ids.T.contiguous()),
        "conv, stride, padding, dilation, unsqueeze": (_UnsqueezeConv(), signals),
        "sequential conv stack": (
            nn.Sequential(
                nn.Unflatten(1, (2, 6)),
                nn.Conv1d(2, 4, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.Conv1d(4, 6, kernel_size=2, stride=2, bias=False),
                nn.Tanh(),
                nn.Flatten(),
                nn.Linear(18, 5),
            ),
            signals,
        ),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_gradients_equal_autograd_run_by_run(case):
    torch.manual_seed(0)
    model, x = _cases()[case]
    model = model.double()
    runs = [copy.deepcopy(model) for _ in range(N_RUNS)]
    with torch.no_grad():
        for k, run in enumerate(runs):
            for p in run.parameters():
                p.add_(0.1 * k * torch.randn_like(p))
    plan = StackedSequential.of(model)
    assert plan is not None
    params = [torch.stack(ps).detach() for ps in zip(*(list(r.parameters()) for r in runs))]
    xs = x.expand(N_RUNS, *x.shape) if not x.is_floating_point() else x.double().expand(N_RUNS, *x.shape)
    saved: list = []
    out = plan.forward(xs, params, saved)
    grad_out = torch.randn_like(out)
    grads = plan.backward(grad_out.clone(), params, saved)
    for k, run in enumerate(runs):
        want = run(xs[k])
        torch.testing.assert_close(out[k], want)
        want_grads = torch.autograd.grad(want, list(run.parameters()), grad_out[k])
        for got, expected in zip(grads, want_grads):
            torch.testing.assert_close(got[k], expected)


class _Skip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return x + self.a(x)


class _FinalState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 4, batch_first=True)

    def forward(self, x):
        _, h_n = self.gru(x)
        return h_n[-1]


@pytest.mark.parametrize(
    "model",
    [
        _Skip(),
        _FinalState(),
        nn.Sequential(nn.LSTM(4, 4)),
        nn.Sequential(nn.Conv1d(4, 4, 3, groups=2)),
        nn.Sequential(nn.Conv1d(4, 4, 3, padding="same")),
        nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)),
        nn.Sequential(nn.Linear(4, 4), nn.Sigmoid()),
        nn.Sequential(nn.ReLU()),
    ],
    ids=["skip connection", "GRU final state", "LSTM", "grouped conv", "'same' padding", "BatchNorm", "sigmoid", "no parameters"],
)
def test_models_outside_the_covered_chains_get_no_plan(model):
    assert StackedSequential.of(model) is None
