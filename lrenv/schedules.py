"""The learning-rate schedules people actually use, as policies that drive an lrenv env.

One class per schedule, each in closed form (as in ``torch.optim.lr_scheduler``); the
module is long because it holds all eleven, and one table documents them together.

Every schedule has the interface of a Stable-Baselines3 policy::

    actions, state = policy.predict(observation, state=None, episode_start=None, deterministic=True)

so one env (or :mod:`lrenv.evaluation`) runs a learned Ψ and the schedules the same way. A
schedule reads what it needs from the observation (progress i/T, and the validation loss for
the reactive ones; see :mod:`lrenv.env.features`) and from its construction parameters (the
task's epoch budget T and LR range); it turns the LR it wants into the env's action with the
env's own mapping (:meth:`lrenv.ActionMapping.to_action`, ``action_mode="absolute"``, the
default). The env clips the LR to the task's ``lr_range``: a schedule that asks for 0 trains
at the bottom of the range.

Schedules (``t`` = index 0..T-1 of the epoch about to be trained, ``lr`` = the peak LR):

==================  =================================================================  ===========================================================
name                LR of epoch t                                                      torch counterpart (stepped per epoch)
==================  =================================================================  ===========================================================
``constant``        lr                                                                 none (or ``ConstantLR(factor=1)``)
``step``            lr · gamma^(number of milestones ≤ t), milestones T/2, 3T/4        ``MultiStepLR``
``exponential``     lr · gamma^t, gamma = decay^(1/T)                                  ``ExponentialLR``
``cosine``          lr · (1 + cos(π t/T)) / 2                                          ``CosineAnnealingLR(T_max=T)``
``cosine_warmup``   linear warmup over w epochs, then cosine over T - w                ``SequentialLR(LinearLR, CosineAnnealingLR)``
``cosine_horizon``  cosine over H ≤ T epochs, then 0 (the range's floor)               ``SequentialLR(CosineAnnealingLR(T_max=H), ConstantLR(0))``
``one_cycle``       up from lr/25 for pct_start·T epochs, down to lr/2.5e5             ``OneCycleLR(cycle_momentum=False)``
``wsd``             warmup, stable at lr, linear decay over the last D epochs          ``SequentialLR(LinearLR, ConstantLR, LinearLR)``
``plateau``         lr, × 0.3 after ``patience`` epochs without improvement            ``ReduceLROnPlateau`` on the validation loss
``bold_driver``     × 1.1 after an epoch that lowered the validation loss, else × 0.5  none
``schedule_free``   warmup, then constant, with a Schedule-Free optimizer              ``schedulefree.SGDScheduleFree`` / ``AdamWScheduleFree``
==================  =================================================================  ===========================================================

Warmups are linear: epoch j < w trains at ``lr · (j + 1) / (w + 1)`` (``LinearLR(start_factor=
1/(w+1), total_iters=w)``). WSD uses ``w = round(T/20)`` and decays as ``lr · (D - j) / (D + 1)``
in its j-th decay epoch (``LinearLR(start_factor=D/(D+1), end_factor=0, total_iters=D)``).
Cosines decay to 0 (``eta_min=0``).

Example::

    import lrenv
    from lrenv.baselines import make_policy

    env = lrenv.LREnv("MNIST1D-MLP-v0")
    policy = make_policy("cosine_horizon", env.task.config, lr=0.3, horizon=0.6)
    obs, info = env.reset(seed=0)
    state, done = None, False
    while not done:
        action, state = policy.predict(obs, state=state)
        obs, reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from lrenv.env.actions import ActionMapping
from lrenv.env.features import FEATURE_SETS

#: ReduceLROnPlateau's factor (its patience is tuned) and the bold driver's factors.
PLATEAU_FACTOR = 0.3
BOLD_UP, BOLD_DOWN = 1.1, 0.5
#: WSD's warmup, as a share of the budget.
WSD_WARMUP = 0.05
#: One-cycle's ``div_factor`` and ``final_div_factor`` (torch's defaults).
ONE_CYCLE_DIV, ONE_CYCLE_FINAL_DIV = 25.0, 1e4


# -- the policy interface ------------------------------------------------------------------


class SchedulePolicy:
    """Base of the baselines: a schedule that acts through an lrenv env like an SB3 policy.

    Args:
        epochs: The task's epoch budget T.
        lr_range: The task's ``(low, high)`` LR range (the env clips to it).
        features: The env's feature set (``"standard"`` or ``"minimal"``): where to find
            progress and validation loss in the observation.

    The env must use ``action_mode="absolute"`` (the default). Subclasses implement
    :meth:`lr_at` (a fixed schedule) or, for reactive ones, :meth:`initial_state` and
    :meth:`react`.
    """

    name: ClassVar[str] = ""
    #: Whether :meth:`predict` carries a per-env state (reactive schedules).
    stateful: ClassVar[bool] = False

    def __init__(self, epochs: int, lr_range: Sequence[float], *, features: str = "standard") -> None:
        if not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        low, high = (float(v) for v in lr_range)
        if not 0 < low < high < math.inf:
            raise ValueError(f"lr_range must be (low, high) with 0 < low < high < inf, got {tuple(lr_range)!r}")
        if features not in FEATURE_SETS:
            raise ValueError(f"unknown feature set {features!r}; choose one of {', '.join(FEATURE_SETS)}")
        names = [f.name for f in FEATURE_SETS[features]]
        self.epochs = int(epochs)
        self.lr_range = (low, high)
        self.features = features
        self._n_features = len(names)
        self._progress = names.index("progress")
        self._valid = names.index("valid_loss")
        self._mapping = ActionMapping("absolute")

    # -- what subclasses provide ---------------------------------------------------------

    def lr_at(self, epoch: np.ndarray) -> np.ndarray:
        """LR of epoch index ``epoch`` (0..T-1, an int array) of a fixed schedule, before clipping."""
        raise NotImplementedError(f"{type(self).__name__} is reactive: it has no fixed lr_at()")

    def initial_state(self, n: int) -> np.ndarray:
        """State of ``n`` fresh episodes (reactive schedules), ``(n, k)`` float64."""
        return np.zeros((n, 0))

    def react(self, valid: np.ndarray, state: np.ndarray, start: np.ndarray) -> np.ndarray:
        """Reactive schedules: LRs of the next epoch from ``log(L/L0)``; updates ``state`` in place."""
        raise NotImplementedError

    # -- SB3 policy interface ------------------------------------------------------------

    def predict(
        self,
        observation: np.ndarray,
        state: np.ndarray | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Actions for a batch of observations ``(n, d)`` (or one, ``(d,)``), as SB3 policies do.

        Args:
            observation: Observations of the env's feature set.
            state: What the previous call returned (reactive schedules; ``None`` starts fresh).
            episode_start: Which envs start a new episode (SB3's convention). An observation
                with progress 0 always starts one, so this may be omitted.
            deterministic: Accepted for SB3 compatibility; baselines are deterministic.

        Returns:
            ``(actions, state)``: actions ``(n, 1)`` float32 in [-1, 1] (``(1,)`` for a
            single observation), and the state to pass to the next call.
        """
        obs = np.asarray(observation, dtype=np.float64)
        single = obs.ndim == 1
        obs = obs.reshape(1, -1) if single else obs
        if obs.ndim != 2 or obs.shape[1] != self._n_features:
            raise ValueError(
                f"{type(self).__name__} expects observations of the {self.features!r} feature set "
                f"({self._n_features} values per env), got shape {np.shape(observation)}"
            )
        n = len(obs)
        epoch = np.clip(np.rint(obs[:, self._progress] * self.epochs).astype(np.int64), 0, self.epochs - 1)
        if self.stateful:
            start = obs[:, self._progress] <= 0
            if episode_start is not None:
                start = start | np.asarray(episode_start, dtype=bool).reshape(-1)
            if state is None:
                state, start = self.initial_state(n), np.ones(n, dtype=bool)
            state = np.array(state, dtype=np.float64, copy=True)
            if state.shape[0] != n:
                raise ValueError(f"state holds {state.shape[0]} envs but {n} observations were given")
            lr = self.react(obs[:, self._valid], state, start)
        else:
            lr = self.lr_at(epoch)
        actions = self.to_action(lr)
        return (actions[0] if single else actions), state

    def to_action(self, lr: np.ndarray) -> np.ndarray:
        """The absolute-mode actions ``(n, 1)`` that ask for ``lr`` (clipped to the range)."""
        lr = np.clip(np.asarray(lr, dtype=np.float64).reshape(-1), *self.lr_range)
        ranges = np.tile(np.array(self.lr_range), (len(lr), 1))
        return self._mapping.to_action(lr, lr, ranges)

    def lrs(self) -> list[float]:
        """The whole schedule, T LRs before clipping (fixed schedules only)."""
        return [float(v) for v in self.lr_at(np.arange(self.epochs))]

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({params}, epochs={self.epochs}, lr_range={self.lr_range})"

    def params(self) -> dict[str, float]:
        """The schedule's own parameters (what tuning chooses)."""
        return {}


def _warmup(t: np.ndarray, w: int, lr: float) -> np.ndarray:
    return lr * (t + 1) / (w + 1)


def _cosine(t: np.ndarray, span: int, lr: float) -> np.ndarray:
    return lr * (1 + np.cos(np.pi * t / span)) / 2


def _epochs_of(fraction: float, epochs: int, minimum: int = 0) -> int:
    return max(minimum, int(round(fraction * epochs)))


# -- fixed schedules -----------------------------------------------------------------------


class Constant(SchedulePolicy):
    """``lr`` at every epoch."""

    name = "constant"

    def __init__(self, epochs: int, lr_range: Sequence[float], *, lr: float, features: str = "standard") -> None:
        super().__init__(epochs, lr_range, features=features)
        self.lr = _positive("lr", lr)

    def lr_at(self, epoch: np.ndarray) -> np.ndarray:
        return np.full(np.shape(epoch), self.lr)

    def params(self) -> dict[str, float]:
        return {"lr": self.lr}


class StepDecay(Constant):
    """``lr`` times ``gamma`` at each milestone (default at T/2 and 3T/4): ``MultiStepLR``."""

    name = "step"

    def __init__(
        self,
        epochs: int,
        lr_range: Sequence[float],
        *,
        lr: float,
        gamma: float = 0.1,
        milestones: Sequence[float] = (0.5, 0.75),
        features: str = "standard",
    ) -> None:
        super().__init__(epochs, lr_range, lr=lr, features=features)
        self.gamma = _fraction("gamma", gamma)
        self.milestones = tuple(_epochs_of(_fraction("milestone", m), epochs, 1) for m in milestones)

    def lr_at(self, epoch: np.ndarray) -> np.ndarray:
        passed = sum((np.asarray(epoch) >= m).astype(np.int64) for m in self.milestones)
        return self.lr * self.gamma ** np.asarray(passed, dtype=np.float64)

    def params(self) -> dict[str, float]:
        return {"lr": self.lr, "gamma": self.gamma}


class ExponentialDecay(Constant):
    """``lr · gamma^t`` with ``gamma = decay^(1/T)``: ``ExponentialLR(gamma)``."""

    name = "exponential"

    def __init__(
        self, epochs: int, lr_range: Sequence[float], *, lr: float, decay: float = 0.01, features: str = "standard"
    ) -> None:
        super().__init__(epochs, lr_range, lr=lr, features=features)
        self.decay = _fraction("decay", decay)
        self.gamma = self.decay ** (1.0 / epochs)

    def lr_at(self, epoch: np.ndarray) -> np.ndarray:
        return self.lr * self.gamma ** np.asarray(epoch, dtype=np.float64)

    def params(self) -> dict[str, float]:
        return {"lr": self.lr, "decay": self.decay}


class Cosine(Constant):
    """``lr · (1 + cos(π t / T)) / 2``: ``CosineAnnealingLR(T_max=T, eta_min=0)``."""

    name = "cosine"

    def lr_at(self, epoch: np.ndarray) -> np.ndarray:
        return _cosine(np.asarray(epoch, dtype=np.float64), self.epochs, self.lr)


class CosineWarmup(Constant):
    """Linear warmup over ``w = round(warmup · T)`` epochs (at least 1), then cosine over T - w."""

    name = "cosine_warmup"

    def __init__(
        self, epochs: int, lr_range: Sequence[float], *, lr: float, warmup: float = 0.05, features: str = "standard"
    ) -> None:
        super().__init__(epochs, lr_range, lr=lr, features=features)
        self.warmup = _fraction("warmup", warmup)
        self.warmup_epochs = min(_epochs_of(self.warmup, epochs, 1), epochs - 1) if epochs > 1 else 0

    def lr_at(self, epoch: np.ndarray) -> np.ndarray:
        t, w = np.asarray(epoch, dtype=np.float64), self.warmup_epochs
        return np.where(t < w, _warmup(t, w, self.lr), _cosine(t - w, self.epochs - w, self.lr))

    def params(self) -> dict[str, float]:
        return {"lr": self.lr, "warmup": self.warmup}


class CosineHorizon(Constant):
    """Cosine that reaches 0 at epoch ``H = round(horizon · T)`` ≤ T, then holds 0 (the range's floor)."""

    name = "cosine_horizon"

    def __init__(
        self, epochs: int, lr_range: Sequence[float], *, lr: float, horizon: float = 0.75, features: str = "standard"
    ) -> None:
        super().__init__(epochs, lr_range, lr=lr, features=features)
        self.horizon = _fraction("horizon", horizon, allow_one=True)
        self.horizon_epochs = min(_epochs_of(self.horizon, epochs, 1), epochs)

    def lr_at(self, epoch: np.ndarray) -> np.ndarray:
        t, h = np.asarray(epoch, dtype=np.float64), self.horizon_epochs
        return np.where(t < h, _cosine(t, h, self.lr), 0.0)

    def params(self) -> dict[str, float]:
        return {"lr": self.lr, "horizon": self.horizon}


class OneCycle(Constant):
    """``OneCycleLR(max_lr=lr, total_steps=T, pct_start, anneal_strategy="cos", cycle_momentum=False)``.

    From ``lr / 25`` up to ``lr`` at epoch ``pct_start · T - 1``, then down to ``lr / 25 / 1e4``
    at the last epoch, both phases cosine (torch's defaults, stepped once per epoch).
    """

    name = "one_cycle"

    def __init__(
        self, epochs: int, lr_range: Sequence[float], *, lr: float, pct_start: float = 0.3, features: str = "standard"
    ) -> None:
        super().__init__(epochs, lr_range, lr=lr, features=features)
        if epochs < 2:
            raise ValueError("one_cycle needs a budget of at least 2 epochs")
        self.pct_start = _fraction("pct_start", pct_start)

    def lr_at(self, epoch: np.ndarray) -> np.ndarray:
        initial = self.lr / ONE_CYCLE_DIV
        final = initial / ONE_CYCLE_FINAL_DIV
        up_end = float(self.pct_start * self.epochs) - 1  # torch's phase boundaries
        down_end = float(self.epochs - 1)
        out = []
        for t in np.asarray(epoch, dtype=np.float64).reshape(-1):
            if t <= up_end:
                out.append(_anneal(initial, self.lr, t / up_end))
            else:
                out.append(_anneal(self.lr, final, (t - up_end) / (down_end - up_end)))
        return np.array(out).reshape(np.shape(epoch))

    def params(self) -> dict[str, float]:
        return {"lr": self.lr, "pct_start": self.pct_start}


def _anneal(start: float, end: float, pct: float) -> float:
    """torch's ``OneCycleLR._annealing_cos``."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


class WarmupStableDecay(Constant):
    """WSD: warmup over ``round(T/20)`` epochs, stable at ``lr``, linear decay over the last D epochs.

    ``D = round(decay_fraction · T)`` (at least 1); decay epoch j trains at ``lr · (D - j)/(D + 1)``.
    """

    name = "wsd"

    def __init__(
        self,
        epochs: int,
        lr_range: Sequence[float],
        *,
        lr: float,
        decay_fraction: float = 0.2,
        features: str = "standard",
    ) -> None:
        super().__init__(epochs, lr_range, lr=lr, features=features)
        self.decay_fraction = _fraction("decay_fraction", decay_fraction, allow_one=True)
        self.decay_epochs = min(_epochs_of(self.decay_fraction, epochs, 1), epochs)
        self.warmup_epochs = min(_epochs_of(WSD_WARMUP, epochs), epochs - self.decay_epochs)

    def lr_at(self, epoch: np.ndarray) -> np.ndarray:
        t = np.asarray(epoch, dtype=np.float64)
        w, d = self.warmup_epochs, self.decay_epochs
        j = t - (self.epochs - d)
        decayed = self.lr * (d - j) / (d + 1)
        return np.where(j >= 0, decayed, np.where(t < w, _warmup(t, w, self.lr), self.lr))

    def params(self) -> dict[str, float]:
        return {"lr": self.lr, "decay_fraction": self.decay_fraction}


class WarmupConstant(Constant):
    """Linear warmup over ``round(warmup · T)`` epochs (0 allowed), then ``lr``.

    The schedule of the ``schedule_free`` reference, whose optimizer averages the iterates.
    """

    name = "schedule_free"

    def __init__(
        self, epochs: int, lr_range: Sequence[float], *, lr: float, warmup: float = 0.0, features: str = "standard"
    ) -> None:
        super().__init__(epochs, lr_range, lr=lr, features=features)
        if not 0 <= warmup < 1:
            raise ValueError(f"warmup must be a fraction in [0, 1), got {warmup!r}")
        self.warmup = float(warmup)
        self.warmup_epochs = min(_epochs_of(self.warmup, epochs), epochs - 1)

    def lr_at(self, epoch: np.ndarray) -> np.ndarray:
        t, w = np.asarray(epoch, dtype=np.float64), self.warmup_epochs
        return np.where(t < w, _warmup(t, w, self.lr), self.lr)

    def params(self) -> dict[str, float]:
        return {"lr": self.lr, "warmup": self.warmup}


class FixedSchedule(SchedulePolicy):
    """A given list of T learning rates, e.g. ``NoisyQuadratic.optimal_schedule()``."""

    name = "fixed"

    def __init__(self, lrs: Sequence[float], lr_range: Sequence[float], *, features: str = "standard") -> None:
        values = np.asarray([float(v) for v in lrs], dtype=np.float64)
        super().__init__(len(values), lr_range, features=features)
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError(f"learning rates must be finite and >= 0, got {values.tolist()}")
        self.values = values

    def lr_at(self, epoch: np.ndarray) -> np.ndarray:
        return self.values[np.asarray(epoch, dtype=np.int64)]


# -- reactive schedules --------------------------------------------------------------------


class Plateau(SchedulePolicy):
    """``ReduceLROnPlateau(mode="min", factor=0.3, patience, threshold=1e-4)`` on the validation loss.

    Exactly torch's rule (relative threshold, no cooldown, ``min_lr=0``, ``eps=1e-8``),
    applied to ``log(L/L0)`` from the observation: ``L < best·(1 - threshold)`` is
    ``log(L/L0) < log(best/L0) + log(1 - threshold)``. The epoch-0 (untrained) loss is not
    a step: torch's scheduler first sees the loss after the first epoch.
    """

    name = "plateau"
    stateful = True

    def __init__(
        self,
        epochs: int,
        lr_range: Sequence[float],
        *,
        lr: float,
        patience: int = 2,
        factor: float = PLATEAU_FACTOR,
        threshold: float = 1e-4,
        features: str = "standard",
    ) -> None:
        super().__init__(epochs, lr_range, features=features)
        self.lr = _positive("lr", lr)
        if int(patience) != patience or patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got {patience!r}")
        self.patience = int(patience)
        self.factor = _fraction("factor", factor)
        self.threshold = float(threshold)

    def initial_state(self, n: int) -> np.ndarray:  # columns: lr, best log-loss, bad epochs
        return np.tile([self.lr, np.inf, 0.0], (n, 1))

    def react(self, valid: np.ndarray, state: np.ndarray, start: np.ndarray) -> np.ndarray:
        state[start] = self.initial_state(int(start.sum()))
        go = ~start
        improved = valid < state[:, 1] + math.log1p(-self.threshold)
        state[go & improved, 1] = valid[go & improved]
        state[go & improved, 2] = 0
        state[go & ~improved, 2] += 1
        cut = go & (state[:, 2] > self.patience)
        new = state[cut, 0] * self.factor  # max(new, min_lr=0)
        state[cut, 0] = np.where(state[cut, 0] - new > 1e-8, new, state[cut, 0])
        state[cut, 2] = 0
        return state[:, 0].copy()

    def params(self) -> dict[str, float]:
        return {"lr": self.lr, "patience": self.patience}


class BoldDriver(SchedulePolicy):
    """The "bold driver": ×1.1 after an epoch that lowered the validation loss, ×0.5 otherwise.

    (Battiti 1989; without the weight rollback, which an LR schedule cannot do.) Starts at
    ``lr``; the LR stays inside the task's range.
    """

    name = "bold_driver"
    stateful = True

    def __init__(
        self,
        epochs: int,
        lr_range: Sequence[float],
        *,
        lr: float,
        up: float = BOLD_UP,
        down: float = BOLD_DOWN,
        features: str = "standard",
    ) -> None:
        super().__init__(epochs, lr_range, features=features)
        self.lr = _positive("lr", lr)
        if not up > 1:
            raise ValueError(f"up must be > 1, got {up!r}")
        self.up, self.down = float(up), _fraction("down", down)

    def initial_state(self, n: int) -> np.ndarray:  # columns: lr, previous log-loss
        return np.tile([self.lr, np.nan], (n, 1))

    def react(self, valid: np.ndarray, state: np.ndarray, start: np.ndarray) -> np.ndarray:
        state[start, 0] = self.lr
        go = ~start
        better = valid < state[:, 1]
        state[go, 0] = np.clip(state[go, 0] * np.where(better[go], self.up, self.down), *self.lr_range)
        state[:, 1] = valid
        return state[:, 0].copy()

    def params(self) -> dict[str, float]:
        return {"lr": self.lr}


# -- argument checks -----------------------------------------------------------------------


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def _fraction(name: str, value: float, allow_one: bool = False) -> float:
    value = float(value)
    if not (0 < value < 1 or (allow_one and value == 1)):
        raise ValueError(f"{name} must be in (0, 1{']' if allow_one else ')'}, got {value!r}")
    return value


__all__ = [
    "BoldDriver",
    "Constant",
    "Cosine",
    "CosineHorizon",
    "CosineWarmup",
    "ExponentialDecay",
    "FixedSchedule",
    "OneCycle",
    "Plateau",
    "SchedulePolicy",
    "StepDecay",
    "WarmupConstant",
    "WarmupStableDecay",
]
