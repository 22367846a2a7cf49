"""The optimizers a task's config names, for one run (torch) and for a stacked population.

``TaskConfig.optimizer`` is one of ``sgd``, ``momentum``, ``adam``, ``adamw``,
``schedulefree_sgd`` and ``schedulefree_adamw``. :func:`make_optimizer` builds the torch
optimizer of one run (the ``schedulefree`` package's ``SGDScheduleFree`` /
``AdamWScheduleFree`` for the last two), :func:`make_stacked_optimizer` the
:class:`StackedOptimizer` of a population whose parameters are stacked along dimension 0:

- :class:`BatchedOptimizer` updates N runs at once, run k with its own learning rate, and
  computes exactly what ``torch.optim.SGD`` (with or without momentum), ``Adam`` and
  ``AdamW`` compute for run k alone (same formulas and order of operations as their
  ``foreach`` implementations; Adam's bias corrections in float64, as torch does with
  Python floats).
- :class:`BatchedScheduleFree` does the same for the ``schedulefree`` package's optimizers.

Schedule-Free optimizers hold the training iterate y during an epoch and the averaged
iterate x between epochs (their ``train()`` / ``eval()`` switches): the engine evaluates x.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import schedulefree
import torch
from torch import nn

from lrenv.task import TaskConfig

ADAM_BETA2 = 0.999
ADAM_EPS = 1e-8


def make_optimizer(params: list[nn.Parameter], config: TaskConfig, lr: float) -> torch.optim.Optimizer:
    """The torch optimizer a task's config names, with its momentum (beta1) and weight decay.

    Schedule-Free ones get no internal warmup (a schedule provides it); call their
    ``train()`` before and ``eval()`` after each epoch (:func:`switches_modes`).
    """
    beta1, wd = config.momentum, config.weight_decay
    name = config.optimizer
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=beta1, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(beta1, ADAM_BETA2), weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(beta1, ADAM_BETA2), weight_decay=wd)
    if name == "schedulefree_sgd":
        return schedulefree.SGDScheduleFree(params, lr=lr, momentum=beta1, weight_decay=wd)
    return schedulefree.AdamWScheduleFree(params, lr=lr, betas=(beta1, ADAM_BETA2), weight_decay=wd)


def switches_modes(config: TaskConfig) -> bool:
    """Whether the optimizer needs ``train()`` before and ``eval()`` after each epoch (Schedule-Free)."""
    return config.optimizer.startswith("schedulefree_")


def schedule_free_variant(optimizer: str) -> str:
    """The Schedule-Free optimizer that stands in for ``optimizer``: SGD for the SGD family, AdamW for Adam's."""
    return "schedulefree_sgd" if optimizer in ("sgd", "momentum", "schedulefree_sgd") else "schedulefree_adamw"


class StackedOptimizer(Protocol):
    """Updates a population's stacked parameters ``[N, ...]``, run k at its own learning rate."""

    def reset_runs(self, runs: Sequence[int]) -> None:
        """Clear the optimizer state of runs that start afresh."""

    def prepare_epoch(self, lrs: np.ndarray, n_steps: int) -> None:
        """Before an epoch of ``n_steps`` updates at per-run learning rates ``lrs``."""

    def step(self, grads: Sequence[torch.Tensor]) -> None:
        """One update of every run from its gradients (stacked like the parameters)."""

    def finish_epoch(self) -> None:
        """After the epoch's last update."""

    def run_state(self, k: int) -> dict:
        """A copy of run k's optimizer state (tensors and numbers)."""

    def load_run_state(self, runs: Sequence[int], state: dict) -> None:
        """Give each of ``runs`` the optimizer state ``state`` of one run."""


def make_stacked_optimizer(params: Sequence[torch.Tensor], config: TaskConfig) -> StackedOptimizer:
    """The stacked counterpart of :func:`make_optimizer` for the optimizer ``config`` names."""
    if switches_modes(config):
        return BatchedScheduleFree(params, config)
    return BatchedOptimizer(params, config)


def _per_run(values: np.ndarray | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One value per run ``[N]``, shaped to broadcast over stacked tensors like ``like``."""
    values = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return values.view(-1, *([1] * (like.dim() - 1)))


class BatchedOptimizer:
    """Per-run-LR optimizer over stacked parameters ``[N, ...]``.

    Args:
        params: Stacked parameter tensors (updated in place).
        config: The task's optimizer settings (name, momentum/beta1, weight decay).
    """

    def __init__(self, params: Sequence[torch.Tensor], config: TaskConfig) -> None:
        self.params = list(params)
        self.config = config
        self.n = self.params[0].shape[0]
        self.kind = config.optimizer
        device = self.params[0].device
        self.steps = np.zeros(self.n, dtype=np.int64)  # per-run optimizer steps (Adam)
        self._state: list[list[torch.Tensor]] = []
        if self.kind == "momentum":
            self._state = [[torch.zeros_like(p) for p in self.params]]
        elif self.kind in ("adam", "adamw"):
            self._state = [[torch.zeros_like(p) for p in self.params], [torch.zeros_like(p) for p in self.params]]
        self._device = device

    def reset_runs(self, runs: Sequence[int]) -> None:
        """Clear the optimizer state of runs that start afresh."""
        idx = list(runs)
        self.steps[idx] = 0
        for group in self._state:
            for s in group:
                s[idx] = 0

    def prepare_epoch(self, lrs: np.ndarray, n_steps: int) -> None:
        """Precompute per-run step sizes for the next ``n_steps`` steps (one host-to-device copy)."""
        lrs = np.asarray(lrs, dtype=np.float64)
        dtype = self.params[0].dtype
        if self.kind in ("adam", "adamw"):
            beta1 = self.config.momentum
            t = self.steps[None, :] + np.arange(1, n_steps + 1)[:, None]  # [n_steps, N]
            bias_correction1 = 1 - beta1**t
            bias_correction2_sqrt = np.sqrt(1 - ADAM_BETA2**t)
            table = np.stack([-(lrs / bias_correction1), bias_correction2_sqrt, np.broadcast_to(lrs, t.shape)])
        else:
            table = np.broadcast_to(lrs, (1, n_steps, self.n))
        # a copy: the broadcast view is read-only, which torch warns about when it shares it
        self._table = torch.tensor(table, dtype=dtype).to(self._device, non_blocking=True)
        self._step_in_epoch = 0

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        """One update of every run from its gradients (stacked like the parameters)."""
        b = self._step_in_epoch
        self._step_in_epoch += 1
        wd = self.config.weight_decay
        params = self.params
        if self.kind in ("sgd", "momentum"):
            lr = self._table[0, b]
            if wd:
                grads = torch._foreach_add(list(grads), params, alpha=wd)
            if self.kind == "momentum":
                (bufs,) = self._state
                torch._foreach_mul_(bufs, self.config.momentum)
                torch._foreach_add_(bufs, list(grads))
                grads = bufs
            torch._foreach_addcmul_(params, list(grads), [_per_run(lr, g) for g in grads], value=-1)
            return
        neg_step, bc2_sqrt, lr = self._table[0, b], self._table[1, b], self._table[2, b]
        exp_avgs, exp_avg_sqs = self._state
        if wd:
            if self.kind == "adamw":
                torch._foreach_mul_(params, [1 - _per_run(lr, p) * wd for p in params])
            else:
                grads = torch._foreach_add(list(grads), params, alpha=wd)
        grads = list(grads)
        torch._foreach_lerp_(exp_avgs, grads, 1 - self.config.momentum)
        torch._foreach_mul_(exp_avg_sqs, ADAM_BETA2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - ADAM_BETA2)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, [_per_run(bc2_sqrt, d) for d in denom])
        torch._foreach_add_(denom, ADAM_EPS)
        torch._foreach_div_(denom, [_per_run(neg_step, d) for d in denom])
        torch._foreach_addcdiv_(params, exp_avgs, denom)

    def finish_epoch(self) -> None:
        self.steps += self._step_in_epoch

    def run_state(self, k: int) -> dict:
        return {"steps": int(self.steps[k]), "buffers": [[s[k].clone() for s in group] for group in self._state]}

    @torch.no_grad()
    def load_run_state(self, runs: Sequence[int], state: dict) -> None:
        idx = list(runs)
        self.steps[idx] = int(state["steps"])
        for group, saved in zip(self._state, state["buffers"], strict=True):
            for s, value in zip(group, saved, strict=True):
                s[idx] = value.to(s.device, s.dtype)


class BatchedScheduleFree:
    """Schedule-Free SGD or AdamW (Defazio et al., 2024) over stacked parameters ``[N, ...]``.

    Run k computes what the ``schedulefree`` package's ``SGDScheduleFree``
    (``schedulefree_sgd``) or ``AdamWScheduleFree`` (``schedulefree_adamw``) computes for it
    alone, with the settings of :func:`make_optimizer` (beta1 = the task's momentum, its
    weight decay, no internal warmup, ``r`` = 0, ``weight_lr_power`` = 2),
    and with ``train()`` before each epoch and ``eval()`` after it: between epochs the
    parameters hold the averaged iterate x. The per-run scalars of the averaging (``lr_max``,
    ``weight_sum``, ``c_{k+1}``) are computed on the host in float64, as the package does with
    Python floats.

    Args:
        params: Stacked parameter tensors (updated in place).
        config: The task's optimizer settings.
    """

    def __init__(self, params: Sequence[torch.Tensor], config: TaskConfig) -> None:
        self.params = list(params)
        self.config = config
        self.n = self.params[0].shape[0]
        self.adam = config.optimizer == "schedulefree_adamw"
        self.beta1 = config.momentum
        self.steps = np.zeros(self.n, dtype=np.int64)
        self.lr_max = np.full(self.n, -1.0)
        self.weight_sum = np.zeros(self.n)
        self._z = [torch.zeros_like(p) for p in self.params]
        self._exp_avg_sq = [torch.zeros_like(p) for p in self.params] if self.adam else []

    def reset_runs(self, runs: Sequence[int]) -> None:
        """Clear the optimizer state of runs that start afresh."""
        idx = list(runs)
        self.steps[idx], self.lr_max[idx], self.weight_sum[idx] = 0, -1.0, 0.0
        for s in self._z + self._exp_avg_sq:
            s[idx] = 0

    @torch.no_grad()
    def prepare_epoch(self, lrs: np.ndarray, n_steps: int) -> None:
        """``train()``: move the parameters from x to y; precompute the epoch's per-run step scalars."""
        started = self.steps > 0  # the package keeps no z before a run's first step
        fresh = torch.as_tensor(~started, device=self.params[0].device)
        for p, z in zip(self.params, self._z):
            p.lerp_(z, _per_run(np.where(started, 1 - self.beta1, 0.0), p))
            z[fresh] = p[fresh]
        lrs = np.asarray(lrs, dtype=np.float64)
        rows = []
        lr_max, weight_sum = self.lr_max.copy(), self.weight_sum.copy()
        for s in range(n_steps):  # the package's float arithmetic, step by step
            lr_max = np.maximum(lrs, lr_max)
            weight = lr_max**2
            weight_sum = weight_sum + weight
            ckp1 = np.divide(weight, weight_sum, out=np.zeros(self.n), where=weight_sum != 0)
            bias_correction2 = 1 - ADAM_BETA2 ** (self.steps + s + 1)
            rows.append([ckp1, lrs * (self.beta1 * (1 - ckp1) - 1), -lrs, bias_correction2])
        self.lr_max, self.weight_sum = lr_max, weight_sum
        dtype, device = self.params[0].dtype, self.params[0].device
        self._table = torch.as_tensor(np.asarray(rows), dtype=dtype).to(device)  # [n_steps, 4, N]
        self._step_in_epoch = 0

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        """One update of every run from its gradients (stacked like the parameters)."""
        ckp1, y_step, z_step, bias_correction2 = self._table[self._step_in_epoch]
        self._step_in_epoch += 1
        grads = list(grads)
        if self.adam:
            torch._foreach_mul_(self._exp_avg_sq, ADAM_BETA2)
            torch._foreach_addcmul_(self._exp_avg_sq, grads, grads, value=1 - ADAM_BETA2)
            denom = torch._foreach_div(self._exp_avg_sq, [_per_run(bias_correction2, g) for g in grads])
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, ADAM_EPS)
            grads = torch._foreach_div(grads, denom)
        if self.config.weight_decay:
            grads = torch._foreach_add(grads, self.params, alpha=self.config.weight_decay)
        for p, z, g in zip(self.params, self._z, grads):
            p.lerp_(z, _per_run(ckp1, p))
            p.addcmul_(g, _per_run(y_step, p))
            z.addcmul_(g, _per_run(z_step, z))

    def run_state(self, k: int) -> dict:
        return {
            "steps": int(self.steps[k]),
            "lr_max": float(self.lr_max[k]),
            "weight_sum": float(self.weight_sum[k]),
            "buffers": [[s[k].clone() for s in self._z], [s[k].clone() for s in self._exp_avg_sq]],
        }

    @torch.no_grad()
    def load_run_state(self, runs: Sequence[int], state: dict) -> None:
        idx = list(runs)
        self.steps[idx], self.lr_max[idx], self.weight_sum[idx] = int(state["steps"]), float(state["lr_max"]), float(state["weight_sum"])
        for group, saved in zip((self._z, self._exp_avg_sq), state["buffers"], strict=True):
            for s, value in zip(group, saved, strict=True):
                s[idx] = value.to(s.device, s.dtype)

    @torch.no_grad()
    def finish_epoch(self) -> None:
        """``eval()``: move the parameters from y to x."""
        self.steps += self._step_in_epoch
        started = self.steps > 0
        for p, z in zip(self.params, self._z):
            p.lerp_(z, _per_run(np.where(started, 1 - 1 / self.beta1, 0.0), p))
