"""Forward and hand-written backward of N stacked models that are chains of layers, as one computation.

For a model that passes its input through ``Linear``, ``Conv1d``, ``Embedding``, ``GRU``,
ReLU/Tanh and reshapes one after another (an ``nn.Sequential``, or any module whose
``forward`` ``torch.fx`` traces to such a chain), :class:`StackedSequential` computes the N
runs' forward pass and gradients with a few large batched matmuls per layer, without
autograd: fewer, larger ops than ``vmap(functional_call)``, which matters on a CPU, where
small ops cost more in overhead than in arithmetic. Activations are ``[N, B, ...]`` (run,
sample, the layer's own shape); parameters are stacked ``[N, *shape]``.

- A convolution runs as im2col: its input windows become rows of a ``[N, B * L_out, k * C_in]``
  matrix that one ``bmm`` multiplies by the weights (vmap turns a Conv1d into one grouped
  convolution instead, 3-4x slower on a CPU). Its input gradient is the transpose: one
  ``bmm``, then ``k`` strided adds back into the input positions.
- A GRU computes the input projections of all time steps in one matmul, then walks the steps
  with one small matmul and a few elementwise ops each, keeping its gates; the backward walks
  them in reverse, and the weight gradients of all steps are one matmul each.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F

from lrenv.engine.stand_ins import unrollable_gru

#: Linear layers with fewer outputs than this run as ``(W @ h^T)^T``: ~2-3x faster than ``h @ W^T``.
NARROW_OUTPUT = 16


class _Layer:
    """One layer of the plan. ``forward`` appends exactly one entry to ``saved`` (when given)."""

    #: whether ``forward`` returns a new tensor nobody else holds (a following activation may overwrite it)
    fresh_output = False

    def forward(self, h: torch.Tensor, params: Sequence[torch.Tensor], saved: list[Any] | None) -> torch.Tensor:
        raise NotImplementedError

    def backward(
        self, grad: torch.Tensor, params: Sequence[torch.Tensor], kept: Any, grads: list[torch.Tensor | None], need_input: bool
    ) -> torch.Tensor | None:
        """Fill this layer's parameter gradients into ``grads``; return the input's gradient if needed."""
        raise NotImplementedError


class _Linear(_Layer):
    """Linear on ``[N, B, ..., in]``: the sample and position dimensions are one matmul's rows."""

    fresh_output = True

    def __init__(self, w_i: int, b_i: int | None) -> None:
        self.w_i, self.b_i = w_i, b_i

    def forward(self, h, params, saved):
        if h.dim() < 3:
            raise ValueError("the stacked Linear takes [N, B, ..., features] inputs")
        rows = h if h.dim() == 3 else h.reshape(h.shape[0], -1, h.shape[-1])
        if saved is not None:
            saved.append(rows)
        w, bias = params[self.w_i], (params[self.b_i] if self.b_i is not None else None)
        if w.shape[1] < NARROW_OUTPUT:
            out_t = torch.baddbmm(bias.unsqueeze(2), w, rows.transpose(1, 2)) if bias is not None else w.bmm(rows.transpose(1, 2))
            out = out_t.transpose(1, 2)
        else:
            out = torch.baddbmm(bias.unsqueeze(1), rows, w.transpose(1, 2)) if bias is not None else rows.bmm(w.transpose(1, 2))
        return out if h.dim() == 3 else out.view(*h.shape[:-1], w.shape[1])

    def backward(self, grad, params, kept, grads, need_input):
        shape = grad.shape
        grad = grad if grad.dim() == 3 else grad.reshape(shape[0], -1, shape[-1])
        grads[self.w_i] = grad.transpose(1, 2).bmm(kept)
        if self.b_i is not None:
            grads[self.b_i] = grad.sum(1)
        if not need_input:
            return None
        g_in = grad.bmm(params[self.w_i])
        return g_in if len(shape) == 3 else g_in.view(*shape[:-1], g_in.shape[-1])


class _Embedding(_Layer):
    """Embedding of ids ``[N, B, ...]``: one gather from the N stacked tables."""

    fresh_output = True

    def __init__(self, embedding: nn.Embedding, w_i: int) -> None:
        self.w_i, self.vocab = w_i, embedding.num_embeddings

    def forward(self, h, params, saved):
        if h.is_floating_point():
            raise ValueError("an Embedding takes integer ids")
        table = params[self.w_i]
        n = table.shape[0]
        flat = (h.reshape(n, -1) + torch.arange(n, device=h.device).unsqueeze(1) * self.vocab).reshape(-1)
        if saved is not None:
            saved.append(flat)
        return table.reshape(-1, table.shape[-1]).index_select(0, flat).view(*h.shape, table.shape[-1])

    def backward(self, grad, params, kept, grads, need_input):
        table = params[self.w_i]
        g_table = grad.new_zeros(table.shape[0] * self.vocab, table.shape[-1])
        grads[self.w_i] = g_table.index_add_(0, kept, grad.reshape(-1, grad.shape[-1])).view(table.shape)
        return None  # ids have no gradient


class _GRU(_Layer):
    """``nn.GRU``'s output sequence (unidirectional, any number of layers, zero initial state).

    The input projections of all time steps are one matmul per layer; each step is one
    small matmul and a few elementwise ops, with no autograd: the backward walks the steps
    in reverse with the gates kept from the forward, and the weight gradients of all steps
    are again one matmul each. Same arithmetic as PyTorch's definition (gate order r, z, n)::

        r = σ(W_ir x + b_ir + W_hr h + b_hr),  z = σ(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)),  h' = (1 - z) ⊙ n + z ⊙ h
    """

    fresh_output = False  # a view of the states the backward keeps

    def __init__(self, gru: nn.GRU, index: dict[int, int]) -> None:
        self.layers = gru.num_layers
        self.size, self.batch_first = gru.hidden_size, gru.batch_first
        self.w_ih = [index[id(getattr(gru, f"weight_ih_l{i}"))] for i in range(self.layers)]
        self.w_hh = [index[id(getattr(gru, f"weight_hh_l{i}"))] for i in range(self.layers)]
        self.b_ih = [index[id(getattr(gru, f"bias_ih_l{i}"))] if gru.bias else None for i in range(self.layers)]
        self.b_hh = [index[id(getattr(gru, f"bias_hh_l{i}"))] if gru.bias else None for i in range(self.layers)]

    def forward(self, h, params, saved):
        if h.dim() != 4:
            raise ValueError("the stacked GRU takes batched sequences [N, B, L, in] (or [N, L, B, in])")
        x = h.transpose(1, 2) if self.batch_first else h  # [N, L, B, in]: one time step per index
        kept = []
        for layer in range(self.layers):
            x, layer_kept = self._layer_forward(x, params, layer, saved is not None)
            kept.append(layer_kept)
        if saved is not None:
            saved.append(kept)
        return x.transpose(1, 2) if self.batch_first else x

    def _layer_forward(self, x: torch.Tensor, params: Sequence[torch.Tensor], layer: int, keep: bool) -> tuple[torch.Tensor, Any]:
        n, steps, batch, _ = x.shape
        size = self.size
        w_hh_t = params[self.w_hh[layer]].transpose(1, 2)
        b_ih, b_hh = (params[i] if i is not None else None for i in (self.b_ih[layer], self.b_hh[layer]))
        x_rows = x.reshape(n, steps * batch, -1)
        w_ih_t = params[self.w_ih[layer]].transpose(1, 2)
        gates_in = (torch.baddbmm(b_ih.unsqueeze(1), x_rows, w_ih_t) if b_ih is not None else x_rows.bmm(w_ih_t)).view(n, steps, batch, 3 * size)
        out = x.new_empty(n, steps + 1, batch, size)  # out[:, 0] is the initial state
        out[:, 0].zero_()
        rz = x.new_empty(n, steps, batch, 2 * size)
        new = x.new_empty(n, steps, batch, size)
        hid_n = x.new_empty(n, steps, batch, size)
        for t in range(steps):
            h = out[:, t]
            hid = torch.baddbmm(b_hh.unsqueeze(1), h, w_hh_t) if b_hh is not None else h.bmm(w_hh_t)
            torch.sigmoid(gates_in[:, t, :, : 2 * size] + hid[..., : 2 * size], out=rz[:, t])
            hid_n[:, t] = hid[..., 2 * size :]
            torch.tanh(torch.addcmul(gates_in[:, t, :, 2 * size :], rz[:, t, :, :size], hid_n[:, t]), out=new[:, t])
            z = rz[:, t, :, size:]
            torch.addcmul(new[:, t], z, h - new[:, t], out=out[:, t + 1])
        return out[:, 1:], ((x_rows, out, rz, new, hid_n) if keep else None)

    def backward(self, grad, params, kept, grads, need_input):
        g = grad.transpose(1, 2) if self.batch_first else grad  # [N, L, B, H]
        for layer in reversed(range(self.layers)):
            g = self._layer_backward(g, params, layer, kept[layer], grads, need_input or layer > 0)
        if not need_input:
            return None
        return g.transpose(1, 2) if self.batch_first else g

    def _layer_backward(self, g_out, params, layer, kept, grads, need_input):
        x_rows, out, rz, new, hid_n = kept
        n, steps, batch, size = new.shape
        w_hh = params[self.w_hh[layer]]
        g_in = g_out.new_empty(n, steps, batch, 3 * size)  # gradients of the input projections
        g_hid = g_out.new_empty(n, steps, batch, 3 * size)  # and of the hidden projections
        g_h = g_out.new_zeros(n, batch, size)
        for t in reversed(range(steps)):
            g_h = g_h + g_out[:, t]
            h_prev, r, z, n_t = out[:, t], rz[:, t, :, :size], rz[:, t, :, size:], new[:, t]
            g_n = torch.ops.aten.tanh_backward(g_h * (1 - z), n_t)  # through h' = (1 - z) n + z h and tanh
            g_rz = torch.cat([g_n * hid_n[:, t], g_h * (h_prev - n_t)], -1)
            torch.ops.aten.sigmoid_backward.grad_input(g_rz, rz[:, t], grad_input=g_in[:, t, :, : 2 * size])
            g_in[:, t, :, 2 * size :] = g_n
            g_hid[:, t, :, : 2 * size] = g_in[:, t, :, : 2 * size]
            torch.mul(g_n, r, out=g_hid[:, t, :, 2 * size :])
            g_h = torch.baddbmm(g_h * z, g_hid[:, t], w_hh)
        g_hid_rows, g_in_rows = g_hid.view(n, -1, 3 * size), g_in.view(n, -1, 3 * size)
        grads[self.w_hh[layer]] = g_hid_rows.transpose(1, 2).bmm(out[:, :-1].reshape(n, -1, size))
        grads[self.w_ih[layer]] = g_in_rows.transpose(1, 2).bmm(x_rows)
        if self.b_ih[layer] is not None:
            grads[self.b_ih[layer]] = g_in_rows.sum(1)
            grads[self.b_hh[layer]] = g_hid_rows.sum(1)
        if not need_input:
            return None
        return g_in_rows.bmm(params[self.w_ih[layer]]).view(n, steps, batch, -1)


class _Conv1d(_Layer):
    """Conv1d on ``[N, B, C, L]`` activations whose memory is channel-last (``[N, B, L, C]``).

    Its output is a transposed view of a channel-last tensor, so consecutive convolutions
    (and the activations between them) never reorder memory. Patches and weights are laid out
    (window element j, channel c), so that gathering windows and scattering their gradients
    back both move whole rows of C channels.
    """

    fresh_output = True

    def __init__(self, conv: nn.Conv1d, w_i: int, b_i: int | None) -> None:
        self.w_i, self.b_i = w_i, b_i
        self.c_in, self.c_out, (self.k,) = conv.in_channels, conv.out_channels, conv.kernel_size
        (self.stride,), (self.dilation,), (self.pad,) = conv.stride, conv.dilation, conv.padding  # type: ignore[misc]

    def _weights(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[N, C_out, k * C_in]``, in (window element, channel) order."""
        w = params[self.w_i]
        return w.transpose(2, 3).reshape(w.shape[0], self.c_out, self.k * self.c_in)

    def forward(self, h, params, saved):
        n, b, c, length = h.shape  # a wrong rank or channel count fails here, while the plan is checked
        if c != self.c_in:
            raise ValueError(f"expected {self.c_in} channels, got {c}")
        rows = h.transpose(2, 3)  # [N, B, L, C]: free when h came from a convolution
        if self.pad:
            rows = F.pad(rows, (0, 0, self.pad, self.pad))
        l_out = (rows.shape[2] - self.dilation * (self.k - 1) - 1) // self.stride + 1
        rows = rows.contiguous()
        s_n, s_b, s_l, s_c = rows.stride()  # windows as a view, copied once into rows of (j, c)
        windows = rows.as_strided((n, b, l_out, self.k, c), (s_n, s_b, self.stride * s_l, self.dilation * s_l, s_c))
        patches = windows.reshape(n, b * l_out, self.k * c)
        w = self._weights(params)
        if self.b_i is not None:
            out = torch.baddbmm(params[self.b_i].unsqueeze(1), patches, w.transpose(1, 2))
        else:
            out = patches.bmm(w.transpose(1, 2))
        if saved is not None:
            saved.append((patches, length))
        return out.view(n, b, l_out, self.c_out).transpose(2, 3)  # [N, B, C_out, L_out], channel-last memory

    def backward(self, grad, params, kept, grads, need_input):
        patches, length = kept
        n, b, _, l_out = grad.shape
        g = grad.transpose(2, 3).reshape(n, b * l_out, self.c_out)  # a view when grad is channel-last
        if self.k * self.c_in < self.c_out:  # few patch columns: this orientation is ~5x faster
            g_w = patches.transpose(1, 2).bmm(g).view(n, self.k, self.c_in, self.c_out).permute(0, 3, 2, 1)
        else:
            g_w = g.transpose(1, 2).bmm(patches).view(n, self.c_out, self.k, self.c_in).transpose(2, 3)
        grads[self.w_i] = g_w.contiguous()
        if self.b_i is not None:
            grads[self.b_i] = g.sum(1)
        if not need_input:
            return None
        g_windows = g.bmm(self._weights(params)).view(n, b, l_out, self.k, self.c_in)
        g_rows = grad.new_zeros(n, b, length + 2 * self.pad, self.c_in)
        last = self.stride * (l_out - 1) + 1
        for j in range(self.k):  # window element j of output position l read input row l * stride + j * dilation
            start = j * self.dilation
            g_rows[:, :, start : start + last : self.stride] += g_windows[:, :, :, j]
        return g_rows[:, :, self.pad : self.pad + length].transpose(2, 3)


class _Activation(_Layer):
    def __init__(self, kind: str, in_place: bool) -> None:
        self.kind, self.in_place = kind, in_place

    def forward(self, h, params, saved):
        if self.kind == "relu":
            h = h.relu_() if self.in_place else torch.relu(h)
        else:
            h = h.tanh_() if self.in_place else torch.tanh(h)
        if saved is not None:
            saved.append(h)  # the backward of both needs the output only
        return h

    def backward(self, grad, params, kept, grads, need_input):
        if self.kind == "relu":  # in place: grad is ours alone
            return torch.ops.aten.threshold_backward.grad_input(grad, kept, 0, grad_input=grad)
        return torch.ops.aten.tanh_backward(grad, kept)


class _Reshape(_Layer):
    """A reshape of each run's activations (``Flatten``, ``Unflatten``, ``unsqueeze``), one dimension later."""

    def __init__(self, reshape: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.reshape = reshape

    def forward(self, h, params, saved):
        if saved is not None:
            saved.append(h)  # its shape and memory layout; activations keep it anyway
        return self.reshape(h)

    def backward(self, grad, params, kept, grads, need_input):
        if not need_input:
            return None
        if kept.is_contiguous():
            return grad.reshape(kept.shape)
        # in the input's memory layout (channel-last after a convolution), so that the
        # elementwise backward before it sees matching strides (mismatched ones are ~10x slower)
        return torch.empty_like(kept).copy_(grad.reshape(kept.shape))


def _later(dim: int) -> int:
    """A per-run dimension's index in the stacked tensor (the run dimension comes first)."""
    return dim + 1 if dim >= 0 else dim


def _flatten(start: int = 1, end: int = -1) -> _Reshape:
    return _Reshape(lambda h: h.flatten(_later(start), _later(end)))


def _unflatten(dim: int, sizes: Sequence[int]) -> _Reshape:
    return _Reshape(lambda h: h.unflatten(_later(dim), sizes))


def _unsqueeze(dim: int) -> _Reshape:
    return _Reshape(lambda h: h.unsqueeze(_later(dim)))


_PARAMETERISED = (_Linear, _Conv1d, _Embedding, _GRU)


class StackedSequential:
    """The layers of a model that is a chain of supported layers, run on stacked parameters.

    Build it with :meth:`of`, which returns ``None`` for models it does not cover.
    """

    def __init__(self, layers: list[_Layer]) -> None:
        self.layers = layers
        # nothing before the first parameterised layer needs a gradient
        self._first = next(i for i, layer in enumerate(layers) if isinstance(layer, _PARAMETERISED))

    @classmethod
    def of(cls, model: nn.Module) -> StackedSequential | None:
        """The plan of ``model``, or ``None`` if it is not a chain of supported layers.

        Covered: an ``nn.Sequential``, or any module whose ``forward`` (as ``torch.fx``
        traces it) feeds its input through a chain of ``Linear``, ``Conv1d`` (zero padding
        given as numbers, no groups), ``Embedding`` (plain), ``GRU`` (unidirectional, its
        output sequence only), ``ReLU``/``Tanh`` (modules or functions), ``Flatten``,
        ``Unflatten`` and ``unsqueeze``, with at least one parameterised layer.
        """
        steps = _chain(model)
        if steps is None:
            return None
        index = {id(p): i for i, p in enumerate(model.parameters())}
        layers: list[_Layer] = []
        for step in steps:
            if isinstance(step, _Layer):
                layers.append(step)
                continue
            bias_i = index[id(step.bias)] if isinstance(getattr(step, "bias", None), torch.Tensor) else None
            kind = type(step)
            if kind is nn.Linear:
                layers.append(_Linear(index[id(step.weight)], bias_i))
            elif kind is nn.Conv1d and step.groups == 1 and step.padding_mode == "zeros" and not isinstance(step.padding, str):
                layers.append(_Conv1d(step, index[id(step.weight)], bias_i))
            elif kind is nn.Embedding and step.padding_idx is None and step.max_norm is None and not step.scale_grad_by_freq and not step.sparse:
                layers.append(_Embedding(step, index[id(step.weight)]))
            elif unrollable_gru(step):
                layers.append(_GRU(step, index))
            elif kind in (nn.ReLU, nn.Tanh):  # in place only on a fresh tensor, not on a view another layer keeps
                layers.append(_Activation("relu" if kind is nn.ReLU else "tanh", in_place=bool(layers) and layers[-1].fresh_output))
            elif kind is nn.Flatten:
                layers.append(_flatten(step.start_dim, step.end_dim))
            elif kind is nn.Unflatten:
                layers.append(_unflatten(step.dim, step.unflattened_size))
            else:
                return None
        if not any(isinstance(layer, _PARAMETERISED) for layer in layers):
            return None
        return cls(layers)

    def forward(self, x: torch.Tensor, params: Sequence[torch.Tensor], saved: list[Any] | None = None) -> torch.Tensor:
        """The output ``[N, B, ...]`` for inputs ``x`` ``[N, B, ...]``.

        With ``saved``, appends what :meth:`backward` needs, one entry per layer.
        """
        h = x
        for layer in self.layers:
            h = layer.forward(h, params, saved)
        return h.contiguous()  # after a narrow layer h is a transposed view; its gradient must not be

    def backward(self, grad: torch.Tensor, params: Sequence[torch.Tensor], saved: list[Any]) -> list[torch.Tensor]:
        """Gradients of every stacked parameter, given the output's gradient and ``forward``'s ``saved``."""
        grads: list[torch.Tensor | None] = [None] * len(params)
        for i in range(len(self.layers) - 1, self._first - 1, -1):
            grad = self.layers[i].backward(grad, params, saved[i], grads, need_input=i > self._first)
        return grads  # type: ignore[return-value]


_ACTIVATIONS = {torch.relu: nn.ReLU, F.relu: nn.ReLU, torch.tanh: nn.Tanh, "relu": nn.ReLU, "tanh": nn.Tanh}


def _chain(model: nn.Module) -> list[nn.Module | _Layer] | None:
    """The modules (and glue layers) ``model`` applies to its input one after another, or ``None``."""
    if isinstance(model, nn.Sequential) and all(not isinstance(m, nn.Sequential) for m in model):
        return list(model)
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # control flow on values, unsupported Python: not a chain we can see
        return None
    graph.eliminate_dead_code()  # e.g. an unused GRU final state
    steps: list[nn.Module | _Layer] = []
    previous = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if previous is not None or node.next.op == "output":
                return None
            previous = node
            continue
        if node.op == "output":
            return steps if node.args[0] is previous else None
        args = list(node.args)
        if not args or args[0] is not previous or any(isinstance(a, torch.fx.Node) for a in args[1:]) or node.kwargs:
            return None
        step = _chain_step(model, node, args[1:], steps)
        if step is None:
            return None
        if step is not _SKIP:
            steps.append(step)
        previous = node
    return None


_SKIP = _Layer()


def _chain_step(model: nn.Module, node: torch.fx.Node, rest: list[Any], steps: list[Any]) -> nn.Module | _Layer | None:
    """What one traced node does to the chain's value, or ``None`` if it is not supported."""
    if node.op == "call_module":
        return model.get_submodule(node.target) if not rest else None
    target = node.target
    if node.op == "call_function" and target is operator.getitem:  # out, _ = gru(x): the output sequence
        return _SKIP if rest == [0] and steps and type(steps[-1]) is nn.GRU else None
    if node.op in ("call_function", "call_method") and not rest and target in _ACTIVATIONS:
        return _ACTIVATIONS[target]()
    if node.op == "call_method" and target == "unsqueeze" and len(rest) == 1 and isinstance(rest[0], int):
        return _unsqueeze(rest[0])
    if node.op == "call_method" and target == "flatten" and all(isinstance(a, int) for a in rest):
        return _flatten(*rest) if rest else _flatten(0)
    return None
