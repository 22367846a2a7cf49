"""A trained policy as a PyTorch learning-rate scheduler.

:class:`PolicyScheduler` is a ``torch.optim.lr_scheduler.LRScheduler`` whose learning rate
for each epoch is the action of a policy trained in :class:`lrenv.LREnv`. Observations are
built by the env's own code (:class:`lrenv.env.features.Observer`), actions are mapped by the
env's :class:`lrenv.env.actions.ActionMapping`, with the features, action mode and observation
normalisation saved in the run's config: given the same losses, the scheduler sets the
learning rates the env would have applied. The policy comes from the run's pickle-free
``policy.json`` / ``policy.safetensors`` (:func:`lrenv.load_policy`): loading it runs no code.

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
  feature and, in relative action mode, the LR the first factor multiplies. In multiplier
  mode it is the base LR that every action scales (``lr = base * shape(i/T) * f ** a``): the policy takes
  the LR's scale from the optimizer and gives its shape. The env starts from the task's
  ``default_lr``; use it for an exact match.

With several parameter groups, group g gets ``lr * initial_lr[g] / initial_lr[0]``: the
policy sets the first group's LR and the others keep their ratios to it.

:class:`FormulaScheduler` does the same for a closed-form policy (:mod:`lrenv.formula`):
``lr = base * expression(features)``, clipped to ``[base/f, base*f]``::

    scheduler = lrenv.FormulaScheduler(optimizer, "0.5*(1 + cos(pi*progress))", epochs=20)
    scheduler = lrenv.load_scheduler(optimizer, "path/formula.json")   # through load_policy
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LRScheduler

from lrenv.engine import EpochStats
from lrenv.env.features import Observer
from lrenv.policy import SHIPPED_POLICIES, LoadedPolicy, load_policy
from lrenv.task import check_lr_range, check_positive_int, is_real, to_float

# Observer arrays a state saved before the best-so-far and highest-LR features may lack, and what stands in for them
_LATER_STATE = {"best_valid": "valid", "best_epoch": "epoch", "valid_change": None, "peak_lr": "lr"}
_RESTARTS = {
    "best_valid": "the best validation loss so far restarts at the latest one (relative_best)",
    "peak_lr": "the highest LR so far restarts at the latest one (relative_peak)",
}


def _float(value: Any, what: str) -> float:
    """A loss as a float: a real number, or a tensor or array holding one real number.

    Bools, strings and tensors of several elements are a TypeError (never read as numbers);
    NaN and inf pass (the caller decides), an int too large for a float is ±inf.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = (value.double() if value.is_floating_point() else value).numpy()  # numpy has no bfloat16
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiu":  # float, signed and unsigned integer
            raise TypeError(f"{what} must be a real number or a one-element tensor, got one of dtype {value.dtype}")
        if value.size != 1:
            raise TypeError(f"{what} must be a real number or a one-element tensor, got shape {tuple(value.shape)}")
        value = value.reshape(()).item()
    if not is_real(value):
        raise TypeError(f"{what} must be a real number or a one-element tensor, got {value!r}")
    return to_float(value)


def _check_initial(losses: dict[str, float]) -> None:
    for what, value in losses.items():
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite: the observations are relative to the epoch-0 losses; got {value!r}")


def _stats(train: float, std: float, valid: float) -> EpochStats:
    return EpochStats(np.array([train]), np.array([std]), np.array([valid]), {}, np.zeros(1, bool))


class PolicyScheduler(LRScheduler):
    """Sets each epoch's learning rate from a trained lrenv policy.

    Args:
        optimizer: The optimizer whose learning rate the policy controls.
        policy: A :class:`lrenv.policy.LoadedPolicy` (see :func:`load_policy`).
        epochs: Epoch budget T of this training run (the ``progress`` feature is epoch / T).
            Default: the training task's ``epochs``.
        lr_range: ``(low, high)`` LR range the actions map onto (and are clipped to). Default:
            the training task's; for a policy in ``"multiplier"`` action mode (such as the
            shipped ``"default"``) ``base/f .. base*f`` around the optimizer's LR.
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
        env = policy.env_config
        # a multiplier-mode policy takes its scale from the optimizer: its default range is base/f .. base*f
        by_base = env.action_mode == "multiplier" and lr_range is None
        # a formula fitted on no task has no task settings: then epochs (and lr_range) must be given
        # (a policy-like object without ``tasks`` is asked for its task settings, as before formulas)
        needs_task = bool(getattr(policy, "tasks", True)) or task is not None or epochs is None or (lr_range is None and not by_base)
        task_config = policy.task_config(task) if needs_task else {}
        self.policy = policy
        # checked before LRScheduler.__init__ touches the optimizer; bools and "3" are no epochs
        self.epochs = check_positive_int(task_config["epochs"] if epochs is None else epochs, "epochs")
        tasks = (getattr(policy, "tasks", None) or []) if epochs is None and task is None else []
        budgets = sorted({policy.task_config(t)["epochs"] for t in tasks})
        if len(budgets) > 1:  # no one training budget to fall back on; the default Ψ anneals over T
            warnings.warn(
                f"no epochs= given: the policy {policy.name!r} has no single training budget (its tasks': {', '.join(map(str, budgets))} epochs),"
                f" so T = {self.epochs}, its first task's; pass epochs=your run's epoch budget, which its schedule follows",
                stacklevel=3,
            )
        self.lr_range = None if by_base else check_lr_range(task_config["lr_range"] if lr_range is None else lr_range, "lr_range")
        if not isinstance(deterministic, (bool, np.bool_)):
            raise TypeError(f"deterministic must be True or False, got {deterministic!r}")
        self.deterministic = bool(deterministic)
        given = {"initial_train_loss": initial_train_loss, "initial_valid_loss": initial_valid_loss}
        initial = {what: _float(v, what) for what, v in given.items() if v is not None}
        _check_initial(initial)
        if initial_valid_loss is None and initial_train_loss is not None:
            raise ValueError("initial_train_loss needs initial_valid_loss too (the env's observations are built from both)")
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
        if by_base:
            f = env.relative_factor
            self.lr_range = check_lr_range((self.current_lr / f, self.current_lr * f), "the optimizer's LR times 1/f .. f")
        if initial_valid_loss is not None:
            self._start(initial_train_loss, initial_valid_loss)

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

        Losses are real numbers or one-element tensors/arrays; a bool, a string or a tensor of
        several elements is a ``TypeError``. As in the env, a loss of 0 or below is floored at
        1e-30 by the observation, and a NaN or inf loss after epoch 0 is taken as a diverged
        value: the features clamp to their bounds and the policy still gets a finite LR. The
        epoch-0 losses must be finite (``ValueError``): every later feature is relative to
        them. A negative ``train_loss_std`` is a ``ValueError``.

        Raises:
            TypeError: A loss is not a number, or is given both positionally and by name.
            ValueError: No loss, a non-finite epoch-0 loss or a negative ``train_loss_std``.
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
        # every argument is type-checked, also at epoch 0 where the spread is not used
        valid = _float(valid_loss, "valid_loss")
        train = valid if train_loss is None else _float(train_loss, "train_loss")
        std = 0.0 if train_loss_std is None else _float(train_loss_std, "train_loss_std")
        if std < 0:  # NaN passes: the std of a diverged epoch's losses
            raise ValueError(f"train_loss_std must be >= 0 (a standard deviation), got {train_loss_std!r}")
        if not self.started:
            _check_initial({"the epoch-0 valid_loss": valid, "the epoch-0 train_loss": train})
            self._start(train_loss, valid_loss)
            return
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
            "observer": {name: np.array(getattr(self.observer, name)).tolist() for name in Observer.STATE},
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
        saved = dict(state_dict["observer"])
        missing = [name for name in _LATER_STATE if name not in saved]
        if missing:
            # what was not saved restarts from the latest epoch: its loss as the best so far, its LR as the highest
            warnings.warn(
                f"this scheduler state has no {', '.join(missing)} (saved by an older lrenv): "
                + " and ".join(_RESTARTS[name] for name in missing if name in _RESTARTS)
                + ", so a policy over those features may act differently from an uninterrupted run",
                stacklevel=2,
            )
            for name in missing:
                stand_in = _LATER_STATE[name]
                saved[name] = saved[stand_in] if stand_in else np.zeros_like(getattr(self.observer, name)).tolist()
        for name in Observer.STATE:
            current = getattr(self.observer, name)
            setattr(self.observer, name, np.array(saved[name], dtype=current.dtype).reshape(current.shape))

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
        base = float(self.base_lrs[0])
        progress = self.observer.epoch / self.epochs  # of the epoch about to be trained
        lr = float(self.actions.to_lr(action, np.array([self.current_lr]), np.array([self.lr_range]), np.array([base]), progress)[0])
        self.current_lr = lr
        self.lrs.append(lr)
        for g, (group, group_base) in enumerate(zip(self.optimizer.param_groups, self.base_lrs)):
            group["lr"] = lr if g == 0 or base <= 0 else lr * float(group_base) / base
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def _exists(text: str) -> bool:
    try:
        return Path(text).exists()
    except (OSError, ValueError):  # a name too long, a null byte: an expression, not a path
        return False


def _formula_policy(formula: Any, features: str | None, relative_factor: float | None) -> LoadedPolicy:
    """The formula policy of :class:`FormulaScheduler`'s ``formula`` argument."""
    from lrenv.formula import DEFAULT_RELATIVE_FACTOR, Formula, FormulaModel, formula_policy

    if isinstance(formula, Formula):
        if features is not None and features != formula.features:
            raise ValueError(f"the formula is over feature set {formula.features!r}, not features={features!r}")
        return formula_policy(formula, relative_factor=DEFAULT_RELATIVE_FACTOR if relative_factor is None else relative_factor)
    if isinstance(formula, str) and not (formula in SHIPPED_POLICIES or formula.endswith(".json") or _exists(formula)):
        return formula_policy(formula, features=features or "relative", relative_factor=DEFAULT_RELATIVE_FACTOR if relative_factor is None else relative_factor)
    if isinstance(formula, (str, Path)):
        policy = load_policy(formula)
    elif isinstance(formula, LoadedPolicy):
        policy = formula
    else:
        raise TypeError(f"formula must be an expression, a Formula, a formula.json path or a loaded formula policy, got {formula!r}")
    if not isinstance(policy.model, FormulaModel):
        raise TypeError(f"{policy.name!r} is not a closed-form formula (its algorithm is {policy.config.get('algo')!r}): use PolicyScheduler")
    model = policy.model
    for what, given, own in (("features", features, model.formula.features), ("relative_factor", relative_factor, model.relative_factor)):
        if given is not None and given != own:
            raise ValueError(f"the formula {policy.name!r} has {what}={own!r}; do not pass {what}={given!r}")
    return policy


class FormulaScheduler(PolicyScheduler):
    """Sets each epoch's learning rate from a closed-form formula ``α_i / α_base = expression(features)``.

    A :class:`PolicyScheduler` of the formula's policy (:func:`lrenv.formula.formula_policy`):
    ``lr = base * ratio``, clipped to ``[base/f, base*f]`` (``base``: the optimizer's LR at
    construction; ``ratio``: the formula's value on the observation, ``progress`` being the
    epoch about to be trained over T). NaN and non-positive ratios give ``base/f``.

    Args:
        optimizer: The optimizer whose learning rate the formula controls.
        formula: An expression (e.g. ``"0.5*(1 + cos(pi*progress))"``), a
            :class:`lrenv.Formula`, ``"default"`` or ``"formula"`` (shipped ones), the path of a
            ``formula.json`` (or a folder holding one), or :func:`lrenv.formula.load_formula`'s policy.
        features: Feature set of an expression (default ``"relative"``); a file or Formula
            brings its own (passing another one is a ``ValueError``).
        relative_factor: f of an expression or Formula (default 100); a file brings its own.
        **kwargs: Keyword arguments of :class:`PolicyScheduler` (``epochs``, ``lr_range``,
            ``initial_train_loss``, ``initial_valid_loss``, ``task``). ``epochs`` is required
            when the formula names no task it was fitted on (a bare expression never does).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        formula: Any,
        *,
        features: str | None = None,
        relative_factor: float | None = None,
        **kwargs: Any,
    ) -> None:
        policy = _formula_policy(formula, features, relative_factor)
        if not policy.tasks and kwargs.get("epochs") is None:
            raise ValueError(f"the formula {policy.name!r} names no task it was fitted on, so it has no epoch budget: pass epochs=T (T: this run's epochs)")
        super().__init__(optimizer, policy, **kwargs)

    @property
    def formula(self) -> Any:
        """The :class:`lrenv.Formula`."""
        return self.policy.model.formula


def load_scheduler(
    optimizer: torch.optim.Optimizer,
    run_dir_or_policy_file: str | Path | LoadedPolicy,
    *,
    trust: bool = False,
    **kwargs: Any,
) -> PolicyScheduler:
    """A :class:`PolicyScheduler` driven by the policy of a training run.

    The policy is read from the run's ``policy.json`` / ``policy.safetensors`` (plain data: no
    code runs; see :func:`lrenv.load_policy`).

    Args:
        optimizer: The optimizer to control.
        run_dir_or_policy_file: ``"default"`` (the policy shipped with lrenv), ``"formula"``
            (the shipped closed form), a run folder written by ``agents.train``, a checkpoint
            folder, the ``policy.json`` in one, a ``formula.json`` (or a folder holding one),
            or an already loaded policy.
        trust: Also read an SB3 ``model.zip``, whose pickles run code when loaded: only for
            files you made yourself.
        **kwargs: Keyword arguments of :class:`PolicyScheduler` (``epochs``, ``lr_range``,
            ``initial_train_loss``, ``initial_valid_loss``, ``task``, ``deterministic``).

    Raises:
        FileNotFoundError: The folder holds no policy or a file of it is missing.
        lrenv.policy.PolicyFileError: A file is damaged or of an unknown format (the message
            names it), or only an SB3 ``model.zip`` is there and ``trust`` is false.
    """
    if isinstance(run_dir_or_policy_file, LoadedPolicy):
        policy = run_dir_or_policy_file
    else:
        policy = load_policy(run_dir_or_policy_file, trust=trust)
    return PolicyScheduler(optimizer, policy, **kwargs)
