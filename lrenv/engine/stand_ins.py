"""Stand-ins for modules that ``torch.func.vmap`` cannot batch, or batches slowly.

The stacked trainer runs a task's model under ``vmap(functional_call(...))``.
:func:`vmappable` returns a copy of a model's structure in which such modules are replaced
by equivalents: same parameter names and shapes, same arithmetic, written with ops that
``vmap`` batches well.

- ``nn.GRU`` has no batching rule at all (a model using it would train its runs in a
  loop): :class:`UnrolledGRU` computes it step by step (one matmul for the input
  projections of all time steps, then one small matmul and a few elementwise ops per step).
- ``nn.Linear`` on inputs with more than one leading dimension (per-position heads of
  sequence models) becomes, under ``vmap``, one tiny matmul per sample; :class:`FlatLinear`
  flattens the leading dimensions first, so the N runs' products are one batched matmul.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F


class UnrolledGRU(nn.Module):
    """``nn.GRU`` (unidirectional, any number of layers, no dropout) as a loop over time steps.

    Computes, per PyTorch's definition (gate order r, z, n)::

        r = σ(W_ir x + b_ir + W_hr h + b_hr)
        z = σ(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
        h' = (1 - z) ⊙ n + z ⊙ h

    Args:
        gru: The module to stand in for; its parameters are shared, not copied.
    """

    def __init__(self, gru: nn.GRU) -> None:
        super().__init__()
        if not unrollable_gru(gru):
            raise ValueError("UnrolledGRU covers nn.GRU, unidirectional and without dropout")
        self.num_layers, self.hidden_size, self.batch_first, self.bias = gru.num_layers, gru.hidden_size, gru.batch_first, gru.bias
        for name, p in gru.named_parameters(recurse=False):
            self.register_parameter(name, p)

    def forward(self, x: torch.Tensor, hx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0 if self.batch_first else 1)
            hx = None if hx is None else hx.unsqueeze(1)
        if self.batch_first:
            x = x.transpose(0, 1)  # [L, B, in]: one time step per leading index
        size = self.hidden_size
        finals = []
        for layer in range(self.num_layers):
            w_ih, w_hh = getattr(self, f"weight_ih_l{layer}"), getattr(self, f"weight_hh_l{layer}")
            b_ih = getattr(self, f"bias_ih_l{layer}") if self.bias else None
            b_hh = getattr(self, f"bias_hh_l{layer}") if self.bias else None
            gates_in = _linear(x, w_ih, b_ih)  # all time steps at once
            # unbind, not gates_in[t]: the backward of t-th indexing would build a full-size
            # zero gradient per step (quadratic in the sequence length); unbind before split:
            # ~1.5x faster under vmap than splitting the whole sequence first
            h = x.new_zeros(x.shape[1], size) if hx is None else hx[layer]
            outputs = []
            for step in gates_in.unbind(0):
                in_rz, in_n = step.split([2 * size, size], -1)
                hid_rz, hid_n = F.linear(h, w_hh, b_hh).split([2 * size, size], -1)
                r, z = torch.sigmoid(in_rz + hid_rz).chunk(2, -1)
                n = torch.tanh(in_n + r * hid_n)
                h = n + z * (h - n)
                outputs.append(h)
            x = torch.stack(outputs)
            finals.append(h)
        out, h_n = (x.transpose(0, 1) if self.batch_first else x), torch.stack(finals)
        if unbatched:
            out, h_n = out.squeeze(0 if self.batch_first else 1), h_n.squeeze(1)
        return out, h_n


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` with the leading dimensions of ``x`` flattened into one."""
    if x.dim() <= 2:
        return F.linear(x, weight, bias)
    return F.linear(x.reshape(-1, x.shape[-1]), weight, bias).view(*x.shape[:-1], weight.shape[0])


class FlatLinear(nn.Module):
    """``nn.Linear`` that flattens the leading dimensions of its input into one matmul.

    Args:
        linear: The module to stand in for; its parameters are shared, not copied.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, self.weight, self.bias)


def unrollable_gru(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.GRU`` that :class:`UnrolledGRU` can stand in for."""
    return type(module) is nn.GRU and not module.bidirectional and module.dropout == 0


def supports(module: nn.Module) -> bool:
    """Whether :func:`vmappable` has a stand-in for ``module``."""
    return type(module) is nn.Linear or unrollable_gru(module)


def stand_in(module: nn.Module) -> nn.Module:
    """The stand-in of a supported module."""
    return FlatLinear(module) if type(module) is nn.Linear else UnrolledGRU(module)  # type: ignore[arg-type]


def vmappable(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every supported module replaced by its stand-in.

    The copy keeps the model's parameter names, so ``functional_call`` accepts the same
    parameter dict for both.
    """
    model = copy.deepcopy(model)
    if supports(model):
        return stand_in(model)
    _replace_children(model)
    return model


def _replace_children(module: nn.Module) -> None:
    for name, child in module.named_children():
        if supports(child):
            setattr(module, name, stand_in(child))
        else:
            _replace_children(child)
