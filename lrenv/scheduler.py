"""A trained policy as a PyTorch learning-rate scheduler.

:class:`PolicyScheduler` is a ``torch.optim.lr_scheduler.LRScheduler`` whose learning rate
for each epoch is the action of a policy trained in :class:`lrenv.LREnv`. Observations are
built by the env's own code (:class:`lrenv.env.features.Observer`), actions are mapped by the
env's :class:`lrenv.env.actions.ActionMapping`, with the features, action mode and observation
normalisation saved in the run's config: given the same losses, the scheduler sets the
learning rates the env would have applied.

Usage in a plain loop (one ``step`` per epoch, losses as floats or 0-d tensors)::

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = lrenv.load_scheduler(optimizer, "runs/<run>",
                                     initial_train_loss=l0_train, initial_valid_loss=l0_valid)
    for epoch in range(epochs):
        train_loss, train_loss_std = train_one_epoch(...)   # mean and std of the batch losses
        valid_loss = evaluate(...)
        scheduler.step(train_loss=train_loss, valid_loss=valid_loss, train_loss_std=train_loss_std)

What each input means (as in the env, see :mod:`lrenv.env.features`):

* ``initial_train_loss`` / ``initial_valid_loss``: losses of the untrained model (epoch 0) on
  the train and validation data. Without them, the first ``step(...)`` call *is* epoch 0: call
  it once before training. Until the epoch-0 losses are known the optimizer keeps its own LR.
* ``train_loss``: mean of the epoch's mini-batch losses; ``valid_loss``: validation loss
  after the epoch. When ``train_loss`` is missing (e.g. Lightning passes only the monitored
  metric) the validation loss stands in for it: the train features then repeat the
  validation ones and the generalisation gap reads 0.
* ``train_loss_std``: standard deviation of the epoch's mini-batch losses (feature
  ``train_loss_spread`` = std / mean). When it is missing the feature is 0, its value at
  epoch 0, which a policy trained on real spreads has seen only at the start.
* The optimizer's LR when the scheduler is created is the starting LR: the epoch-0 ``log_lr``
  feature and, in relative action mode, the LR the first factor multiplies. The env starts
  from the task's ``default_lr``; use it for an exact match.

With several parameter groups, group g gets ``lr * initial_lr[g] / initial_lr[0]``: the
policy sets the first group's LR and the others keep their ratios to it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LRScheduler

from lrenv.engine import EpochStats
from lrenv.env.features import Observer
from lrenv.policy import LoadedPolicy, load_policy

# Observer arrays that make up the scheduler's state (with the scheduler's own numbers)
_OBSERVER_STATE = ("epoch", "epochs", "lr", "log_lr_range", "first_train", "first_valid", "train", "valid")


def _float(value: Any, what: str) -> float:
    if isinstance(value, torch.Tensor):
        value = value.detach().item()
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be a number or a 0-d tensor, got {value!r}") from exc


def _stats(train: float, std: float, valid: float) -> EpochStats:
    return EpochStats(np.array([train]), np.array([std]), np.array([valid]), {}, np.zeros(1, bool))


class PolicyScheduler(LRScheduler):
    """Sets each epoch's learning rate from a trained lrenv policy.

    Args:
        optimizer: The optimizer whose learning rate the policy controls.
        policy: A :class:`lrenv.policy.LoadedPolicy` (see :func:`load_policy`).
        epochs: Epoch budget T of this training run (the ``progress`` feature is epoch / T).
            Default: the training task's ``epochs``.
        lr_range: ``(low, high)`` LR range the actions map onto. Default: the training task's.
        initial_train_loss: Train loss of the untrained model (epoch 0); see the module doc.
        initial_valid_loss: Validation loss of the untrained model (epoch 0).
        task: Which training task's ``epochs``/``lr_range`` to default to when the policy was
            trained on several (default: the first).
        deterministic: Use the policy's mode (``True``) or sample from it.

    Call :meth:`step` once per epoch with that epoch's losses. ``state_dict`` holds numbers
    only (no policy); restore with a scheduler built from the same run and ``load_state_dict``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        policy: LoadedPolicy,
        *,
        epochs: int | None = None,
        lr_range: tuple[float, float] | None = None,
        initial_train_loss: float | torch.Tensor | None = None,
        initial_valid_loss: float | torch.Tensor | None = None,
        task: str | None = None,
        deterministic: bool = True,
    ) -> None:
        task_config = policy.task_config(task)
        self.policy = policy
        self.epochs = int(task_config["epochs"] if epochs is None else epochs)
        if self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        low, high = (float(v) for v in (task_config["lr_range"] if lr_range is None else lr_range))
        if not (0 < low < high and math.isfinite(high)):
            raise ValueError(f"lr_range must be (low, high) with 0 < low < high < inf, got {lr_range!r}")
        self.lr_range = (low, high)
        self.deterministic = deterministic
        env = policy.env_config
        self.observer = Observer(env.features, n=1)
        self.actions = env.action_mapping()
        self.started = False  # epoch-0 losses seen
        self.lrs: list[float] = []  # policy LR chosen for epochs 1, 2, ...
        #: The latest raw observation (before normalisation), ``(n_features,)``; ``None`` before epoch 0.
        self.observation: np.ndarray | None = None
        self._initialising = True  # LRScheduler.__init__ calls step() with no losses
        super().__init__(optimizer)
        self._initialising = False
        self.current_lr = float(self.base_lrs[0])
        if initial_valid_loss is not None:
            self._start(initial_train_loss, initial_valid_loss)
        elif initial_train_loss is not None:
            raise ValueError("initial_train_loss needs initial_valid_loss too (the env's observations are built from both)")

    # -- LRScheduler API -------------------------------------------------------------------

    def _initial_step(self) -> None:
        # nothing to decide before the epoch-0 losses; count this call as LRScheduler does
        self._step_count = 1
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def step(  # type: ignore[override]
        self,
        metrics: float | torch.Tensor | None = None,
        *,
        train_loss: float | torch.Tensor | None = None,
        valid_loss: float | torch.Tensor | None = None,
        train_loss_std: float | torch.Tensor | None = None,
    ) -> None:
        """Report one epoch's losses; sets the learning rate of the next epoch.

        Args:
            metrics: The validation loss, positionally (how Lightning and
                ``ReduceLROnPlateau`` users pass the monitored metric).
            train_loss: Mean mini-batch loss of the epoch (default: the validation loss).
            valid_loss: Validation loss after the epoch.
            train_loss_std: Standard deviation of the epoch's mini-batch losses (default: the
                spread feature reads 0).

        Before the epoch-0 losses are known (no ``initial_*`` arguments), the first call
        gives them: the untrained model's losses.
        """
        if valid_loss is None:
            valid_loss = metrics
        elif metrics is not None:
            raise TypeError("pass the validation loss once: positionally (metrics) or as valid_loss=")
        if valid_loss is None and self._initialising:
            return
        if valid_loss is None:
            raise ValueError(
                "PolicyScheduler.step needs this epoch's losses: step(train_loss=..., valid_loss=...). "
                "In PyTorch Lightning return {'scheduler': s, 'monitor': 'val_loss', 'interval': 'epoch', "
                "'reduce_on_plateau': True} from configure_optimizers so Lightning passes the monitored loss"
            )
        if not self.started:
            self._start(train_loss, valid_loss)
            return
        valid = _float(valid_loss, "valid_loss")
        train = valid if train_loss is None else _float(train_loss, "train_loss")
        std = 0.0 if train_loss_std is None else _float(train_loss_std, "train_loss_std")
        self._step_count += 1
        self.last_epoch += 1
        obs = self.observer.update(_stats(train, std, valid), np.array([self.current_lr]))
        self._act(obs)

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Numbers only: the epoch, LRs so far and the observer's loss history."""
        return {
            "policy": self.policy.name,
            "epochs": self.epochs,
            "lr_range": list(self.lr_range),
            "started": self.started,
            "current_lr": self.current_lr,
            "lrs": list(self.lrs),
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,
            "base_lrs": [float(lr) for lr in self.base_lrs],
            "_last_lr": [float(lr) for lr in self._last_lr],
            "observation": None if self.observation is None else self.observation.tolist(),
            "observer": {name: np.array(getattr(self.observer, name)).tolist() for name in _OBSERVER_STATE},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (into a scheduler built from the same run)."""
        if state_dict.get("policy") != self.policy.name:
            raise ValueError(f"this state belongs to a scheduler of policy {state_dict.get('policy')!r}, not {self.policy.name!r}")
        self.epochs = int(state_dict["epochs"])
        self.lr_range = tuple(state_dict["lr_range"])
        self.started = bool(state_dict["started"])
        self.current_lr = float(state_dict["current_lr"])
        self.lrs = list(state_dict["lrs"])
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict["_step_count"])
        self.base_lrs = list(state_dict["base_lrs"])
        self._last_lr = list(state_dict["_last_lr"])
        obs = state_dict["observation"]
        self.observation = None if obs is None else np.array(obs, dtype=np.float32)
        for name in _OBSERVER_STATE:
            current = getattr(self.observer, name)
            setattr(self.observer, name, np.array(state_dict["observer"][name], dtype=current.dtype).reshape(current.shape))

    # -- internals -------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """Epochs reported so far (0 until the first epoch after epoch 0)."""
        return int(self.observer.epoch[0])

    def _start(self, train_loss: Any, valid_loss: Any) -> None:
        valid = _float(valid_loss, "initial valid loss")
        train = valid if train_loss is None else _float(train_loss, "initial train loss")
        self.started = True
        self.last_epoch = 0
        obs = self.observer.reset(
            [0],
            _stats(train, 0.0, valid),
            np.array([self.current_lr]),
            np.array([self.epochs]),
            np.array([self.lr_range]),
        )
        self._act(obs)

    def _act(self, obs: np.ndarray) -> None:
        self.observation = obs[0]
        action = self.policy.predict(obs, deterministic=self.deterministic)
        lr = float(self.actions.to_lr(action, np.array([self.current_lr]), np.array([self.lr_range]))[0])
        self.current_lr = lr
        self.lrs.append(lr)
        base = float(self.base_lrs[0])
        for g, (group, group_base) in enumerate(zip(self.optimizer.param_groups, self.base_lrs)):
            group["lr"] = lr if g == 0 or base <= 0 else lr * float(group_base) / base
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def load_scheduler(
    optimizer: torch.optim.Optimizer,
    run_dir_or_policy_file: str | Path | LoadedPolicy,
    **kwargs: Any,
) -> PolicyScheduler:
    """A :class:`PolicyScheduler` driven by the policy of a training run.

    Args:
        optimizer: The optimizer to control.
        run_dir_or_policy_file: A run folder written by ``agents.train``, a checkpoint folder,
            a ``model.zip`` in one, or an already loaded policy.
        **kwargs: Keyword arguments of :class:`PolicyScheduler` (``epochs``, ``lr_range``,
            ``initial_train_loss``, ``initial_valid_loss``, ``task``, ``deterministic``).
    """
    policy = run_dir_or_policy_file if isinstance(run_dir_or_policy_file, LoadedPolicy) else load_policy(run_dir_or_policy_file)
    return PolicyScheduler(optimizer, policy, **kwargs)
