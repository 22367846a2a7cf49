"""The engine's vmappable stand-ins compute what the modules they replace compute."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from lrenv.engine.stand_ins import FlatLinear, UnrolledGRU, supports, vmappable


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({"batch_first": True}, (5, 7, 3)),
        ({"batch_first": False, "num_layers": 2}, (7, 5, 3)),
        ({"batch_first": True, "bias": False}, (5, 7, 3)),
        ({"batch_first": False}, (7, 3)),  # unbatched input
    ],
)
@pytest.mark.parametrize("with_hx", [False, True])
def test_unrolled_gru_matches_nn_gru(kwargs, shape, with_hx):
    torch.manual_seed(0)
    gru = nn.GRU(3, 4, dtype=torch.float64, **kwargs)
    x = torch.randn(*shape, dtype=torch.float64)
    hx = None
    if with_hx:
        batch = () if len(shape) == 2 else (shape[0] if kwargs.get("batch_first") else shape[1],)
        hx = torch.randn(gru.num_layers, *batch, 4, dtype=torch.float64)
    want_out, want_h = gru(x, hx)
    unrolled = UnrolledGRU(gru)
    got_out, got_h = unrolled(x, hx)
    torch.testing.assert_close(got_out, want_out)
    torch.testing.assert_close(got_h, want_h)
    # same gradients for every shared parameter
    want = torch.autograd.grad(want_out.square().sum(), list(gru.parameters()))
    got = torch.autograd.grad(got_out.square().sum(), list(unrolled.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_vmappable_replaces_nested_grus_and_keeps_parameter_names():
    model = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.GRU(3, 4)), nn.LSTM(4, 2))
    copy = vmappable(model)
    assert isinstance(copy[0], FlatLinear) and isinstance(copy[1][0], UnrolledGRU) and isinstance(copy[2], nn.LSTM)
    assert [n for n, _ in copy.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert isinstance(model[1][0], nn.GRU)  # the original is untouched
    assert not supports(nn.GRU(3, 4, bidirectional=True)) and not supports(nn.GRU(3, 4, num_layers=2, dropout=0.5))


def test_a_population_of_grus_runs_under_vmap():
    torch.manual_seed(0)
    grus = [nn.GRU(3, 4, batch_first=True) for _ in range(3)]
    names = [n for n, _ in grus[0].named_parameters()]
    stacked = {n: torch.stack([dict(g.named_parameters())[n].detach() for g in grus]) for n in names}
    x = torch.randn(3, 2, 5, 3)
    structure = vmappable(grus[0]).to("meta")
    out, _ = vmap(lambda p, xb: functional_call(structure, p, (xb,)))(stacked, x)
    for k, gru in enumerate(grus):
        torch.testing.assert_close(out[k], gru(x[k])[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(3,), (5, 3), (2, 5, 3), (2, 4, 5, 3)])
def test_flat_linear_matches_linear(shape):
    torch.manual_seed(0)
    linear = nn.Linear(3, 4)
    x = torch.randn(*shape)
    torch.testing.assert_close(FlatLinear(linear)(x), linear(x))
