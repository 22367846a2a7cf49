"""How the engine trains a population: a loop of modules, or one stacked computation.

:class:`LoopTrainer` keeps one ``nn.Module`` and torch optimizer per run and trains them one
after another: it works for every task. :class:`StackedTrainer` stacks the N runs'
parameters along a new first dimension and trains them as one computation
(``torch.func.functional_call`` under ``vmap``, gradients by autograd, or, for models that
are chains of Linear, Conv1d, Embedding, GRU and activation layers, by the hand-written
backward of :class:`~lrenv.engine.stacked_layers.StackedSequential`, 1.3-1.6x faster on a CPU), with
the stacked optimizer of :mod:`lrenv.engine.optim` that the task's config names.
Both produce, for run k, what run k trained alone with the matching torch optimizer
produces (up to float rounding).

A trainer gets the runs' data-order permutations from the engine, writes the batch losses
into a device buffer and never reads anything back to the host.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from lrenv.engine.optim import make_optimizer, make_stacked_optimizer, switches_modes
from lrenv.engine.stacked_layers import StackedSequential
from lrenv.engine.stand_ins import unrollable_gru, vmappable
from lrenv.task import ClassificationTask, Split, Task

#: Samples per forward pass when evaluating a split (memory bound, not a training setting);
#: a population of N runs evaluates ``EVAL_CHUNK // N`` (at least ``MIN_EVAL_CHUNK``) at a time,
#: so that its activations stay about as large as one run's and in cache.
EVAL_CHUNK = 4096
MIN_EVAL_CHUNK = 256


class LoopTrainer:
    """One module and torch optimizer per run, trained one after another.

    A Schedule-Free optimizer is switched to ``train()`` for the epoch and back to
    ``eval()`` after it, so that between epochs the parameters hold the averaged iterate.
    """

    def __init__(self, task: Task, n_runs: int) -> None:
        self.task = task
        self.models: list[nn.Module | None] = [None] * n_runs
        self.optimizers: list[torch.optim.Optimizer | None] = [None] * n_runs

    def init_runs(self, runs: Sequence[int], models: Sequence[nn.Module]) -> None:
        for k, model in zip(runs, models):
            self.models[k] = model
            self.optimizers[k] = make_optimizer(list(model.parameters()), self.task.config, self.task.config.default_lr)

    def train_epoch(self, lrs: np.ndarray, perms: torch.Tensor, train: Split, losses_out: torch.Tensor) -> None:
        batch, loss_fn = self.task.config.batch_size, self.task.loss
        x, y = train.x, train.y
        modes = switches_modes(self.task.config)
        for k, (model, optimizer) in enumerate(zip(self.models, self.optimizers)):
            assert model is not None and optimizer is not None
            for group in optimizer.param_groups:
                group["lr"] = float(lrs[k])
            model.train()
            if modes:
                optimizer.train()  # type: ignore[attr-defined]
            out_k = losses_out[k]
            try:
                for b, idx in enumerate(perms[k].split(batch)):
                    loss = loss_fn(model(x[idx]), y[idx])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    out_k[b] = loss.detach()
            finally:
                if modes:
                    optimizer.eval()  # type: ignore[attr-defined]

    @torch.no_grad()
    def evaluate(self, split: Split, runs: Sequence[int]) -> tuple[tuple[str, ...], torch.Tensor]:
        rows, names = [], ()
        for k in runs:
            model = self.models[k]
            assert model is not None
            model.eval()
            names, row = _chunked_eval(self.task, lambda xb, m=model: m(xb), split, batched=False)
            rows.append(row)
        return names, torch.stack(rows)

    def model(self, k: int) -> nn.Module:
        model = self.models[k]
        assert model is not None
        return model

    def run_state(self, k: int) -> dict:
        """A copy of run k's parameters and torch optimizer state."""
        model, optimizer = self.models[k], self.optimizers[k]
        assert model is not None and optimizer is not None
        return {"params": [p.detach().clone() for p in model.parameters()], "optimizer": copy.deepcopy(optimizer.state_dict())}

    @torch.no_grad()
    def load_run_state(self, runs: Sequence[int], state: dict) -> None:
        for k in runs:
            model, optimizer = self.models[k], self.optimizers[k]
            assert model is not None and optimizer is not None
            for p, value in zip(model.parameters(), state["params"], strict=True):
                p.copy_(value)
            optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))


def _chunked_eval(
    task: Task, forward: Callable[[torch.Tensor], torch.Tensor], split: Split, batched: bool, chunk: int = EVAL_CHUNK
) -> tuple[tuple[str, ...], torch.Tensor]:
    """``[loss, *metrics]`` on ``split`` (per run when ``batched``), as device values."""
    n = len(split)
    total: torch.Tensor | None = None
    names: tuple[str, ...] = ()
    for start in range(0, n, chunk):
        xb, yb = split.x[start : start + chunk], split.y[start : start + chunk]
        out = forward(xb)

        def values(o: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            metrics = task.metrics(o, t)
            return torch.stack([task.loss(o, t), *(v.to(o.dtype) for v in metrics.values())])

        names = tuple(task.metrics(out[0] if batched else out, yb))
        part = (vmap(values, in_dims=(0, None))(out, yb) if batched else values(out, yb)) * (len(xb) / n)
        total = part if total is None else total + part
    assert total is not None
    return names, total


class NotBatchable(Exception):
    """The task's model cannot be trained as one stacked computation."""


class StackedTrainer:
    """All runs' parameters stacked ``[N, ...]`` and trained as one computation.

    Args:
        task: The task.
        n_runs: Population size N.
        template: A model of the task (its structure; its parameter values are not used).
        train: The train split (a few samples run through the model as a check).
        unroll_recurrent: Stack an ``nn.GRU`` that the hand-written backward does not cover
            through its unrolled stand-in (:mod:`lrenv.engine.stand_ins`). Worth it on a GPU; on a
            CPU the stand-in of a population of 32 runs measured no faster than the fused
            module in a loop.

    Raises:
        NotBatchable: the model has buffers (e.g. BatchNorm), dropout, an ``nn.GRU`` that
            is neither covered nor to be unrolled, or fails under vmap.
    """

    def __init__(
        self,
        task: Task,
        n_runs: int,
        template: nn.Module,
        train: Split,
        unroll_recurrent: bool = True,
    ) -> None:
        self.task = task
        self.n = n_runs
        if list(template.buffers()):
            raise NotBatchable("the model has buffers (e.g. BatchNorm running statistics)")
        if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in template.modules()):
            raise NotBatchable("the model uses dropout, whose random masks differ from a lone run's")
        self.names = [name for name, _ in template.named_parameters()]
        self.params = [p.detach().unsqueeze(0).repeat(n_runs, *([1] * p.dim())).contiguous() for p in template.parameters()]
        self.template = template
        self.structure = _structure_only(template)
        self.optimizer = make_stacked_optimizer(self.params, task.config)
        self._flat_cross_entropy = isinstance(task, ClassificationTask) and type(task).loss is ClassificationTask.loss
        self._vmapped_loss = vmap(self._run_loss, in_dims=(0, 0, 0))
        self._vmapped_output = vmap(self._run_output, in_dims=(0, 0))
        self._layers = self._hand_written_plan(train)
        if self._layers is None and not unroll_recurrent and any(unrollable_gru(m) for m in template.modules()):
            raise NotBatchable("recurrent modules are stacked only on CUDA or with batched=True")
        self._grads = self._layer_grads if self._layers is not None else self._autograd_grads
        try:  # gradients of a few samples (nothing is updated), so failures surface here
            idx = torch.arange(min(len(train), 2), device=train.x.device).expand(n_runs, -1)
            _, grads = self._grads(train.x[idx], train.y[idx])
            if len(grads) != len(self.params) or not all(g.shape == p.shape for g, p in zip(grads, self.params)):
                raise NotBatchable("gradients do not match the stacked parameters")
        except NotBatchable:
            raise
        except Exception as exc:  # vmap has no batching rule for some ops (e.g. fused RNNs)
            raise NotBatchable(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc

    @property
    def hand_written(self) -> bool:
        """Whether gradients come from the hand-written backward (else vmap + autograd)."""
        return self._layers is not None

    def use_autograd(self) -> None:
        """Train through vmap + autograd even where the hand-written backward applies (to compare them)."""
        self._layers, self._grads = None, self._autograd_grads

    def init_runs(self, runs: Sequence[int], models: Sequence[nn.Module]) -> None:
        with torch.no_grad():
            for k, model in zip(runs, models):
                for stacked, p in zip(self.params, model.parameters()):
                    stacked[k].copy_(p.detach())
        self.optimizer.reset_runs(runs)

    def train_epoch(self, lrs: np.ndarray, perms: torch.Tensor, train: Split, losses_out: torch.Tensor) -> None:
        batch = self.task.config.batch_size
        n_batches = losses_out.shape[1]
        self.optimizer.prepare_epoch(lrs, n_batches)
        for b in range(n_batches):
            idx = perms[:, b * batch : (b + 1) * batch]
            losses, grads = self._grads(_gather(train.x, idx), _gather(train.y, idx))
            self.optimizer.step(grads)
            losses_out[:, b] = losses
        self.optimizer.finish_epoch()

    @torch.no_grad()
    def evaluate(self, split: Split, runs: Sequence[int]) -> tuple[tuple[str, ...], torch.Tensor]:
        idx = torch.as_tensor(list(runs), device=self.params[0].device)
        params = self.params if len(runs) == self.n else [p[idx] for p in self.params]
        chunk = max(MIN_EVAL_CHUNK, EVAL_CHUNK // len(idx))
        if self._layers is not None:
            layers = self._layers
            return _chunked_eval(self.task, lambda xb: layers.forward(xb.expand(len(idx), *xb.shape), params), split, True, chunk)
        forward = vmap(self._run_output, in_dims=(0, None))
        return _chunked_eval(self.task, lambda xb: forward(params, xb), split, True, chunk)

    def run_state(self, k: int) -> dict:
        """A copy of run k's parameters and stacked optimizer state."""
        return {"params": [p[k].clone() for p in self.params], "optimizer": self.optimizer.run_state(k)}

    @torch.no_grad()
    def load_run_state(self, runs: Sequence[int], state: dict) -> None:
        idx = list(runs)
        for stacked, value in zip(self.params, state["params"], strict=True):
            stacked[idx] = value.to(stacked.device, stacked.dtype)
        self.optimizer.load_run_state(idx, state["optimizer"])

    def model(self, k: int) -> nn.Module:
        """A new module holding a copy of run k's current parameters."""
        model = copy.deepcopy(self.template)
        with torch.no_grad():
            for p, stacked in zip(model.parameters(), self.params):
                p.copy_(stacked[k])
        return model

    # -- gradients -------------------------------------------------------------------------

    def _run_output(self, params: list[torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return functional_call(self.structure, dict(zip(self.names, params)), (xb,))

    def _run_loss(self, params: list[torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return self.task.loss(self._run_output(params, xb), yb)

    def _autograd_grads(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        leaves = [p.detach().requires_grad_(True) for p in self.params]
        if self._flat_cross_entropy:
            losses = self._flat_losses(self._vmapped_output(leaves, xb), yb)
        else:
            losses = self._vmapped_loss(leaves, xb, yb)
        grads = torch.autograd.grad(losses.sum(), leaves)
        return losses.detach(), list(grads)

    def _losses_and_output_grad(self, out: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-run losses ``[N]`` and their gradient with respect to ``out``."""
        out = out.detach().requires_grad_(True)
        losses = self._flat_losses(out, yb) if self._flat_cross_entropy else vmap(self.task.loss)(out, yb)
        (grad,) = torch.autograd.grad(losses.sum(), out)
        return losses.detach(), grad

    @staticmethod
    def _flat_losses(out: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """ClassificationTask's loss of every run ``[N]`` as one cross-entropy: ~2.5x faster than vmap's."""
        n_runs, n_samples = yb.shape[0], yb[0].numel()
        per_sample = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1), reduction="none")
        return per_sample.view(n_runs, n_samples).mean(1)

    def _layer_grads(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward and backward of a chain of layers by hand: fewer, larger ops."""
        assert self._layers is not None
        saved: list = []
        losses, grad = self._losses_and_output_grad(self._layers.forward(xb, self.params, saved), yb)
        return losses, self._layers.backward(grad, self.params, saved)

    def _hand_written_plan(self, train: Split) -> StackedSequential | None:
        """The model's :class:`StackedSequential` if it covers the model on this data, else ``None``.

        Covering the layer types is not enough (a Linear on sequence inputs is not planned
        for): the plan's output on a few samples must equal the vmap path's.
        """
        layers = StackedSequential.of(self.template)
        if layers is None:
            return None
        x = train.x[: min(len(train), 2)].expand(self.n, -1, *train.x.shape[1:])
        try:
            with torch.no_grad():
                planned, reference = layers.forward(x, self.params), self._vmapped_output(self.params, x)
        except (RuntimeError, ValueError):
            return None
        # a plan that misreads the model is off by O(1); the tolerance admits TF32 convolutions on CUDA
        if planned.shape != reference.shape or not torch.allclose(planned, reference, rtol=1e-2, atol=1e-3):
            return None
        return layers


def _gather(data: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``data[idx]`` for a 2-D index ``[N, B]``; index_select is ~5x faster than advanced indexing."""
    return data.index_select(0, idx.reshape(-1)).view(*idx.shape, *data.shape[1:])


def _structure_only(model: nn.Module) -> nn.Module:
    """A copy of the module on the meta device, with vmappable stand-ins: its structure for ``functional_call``."""
    return vmappable(model).to("meta")
