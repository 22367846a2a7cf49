"""Observations: loss history of a run -> a bounded, scale-free float32 vector.

The env, the batched VecEnv and the PyTorch scheduler all build observations with
:class:`Observer`, from the same settings, so a policy sees the same numbers in training and
in a user's loop. An Observer tracks N runs at once (arrays of shape ``(N,)``).

Feature sets (every value is clipped to its bounds; non-finite values become a bound):

``"standard"``

=====  ======================  ================================================  ===========
index  name                    meaning                                           bounds
=====  ======================  ================================================  ===========
0      ``progress``            epoch / epoch budget, i / T                       [0, 1]
1      ``log_lr``              log LR in the task's LR range mapped to [-1, 1]   [-1, 1]
2      ``train_loss``          log(train loss / train loss at epoch 0)           [-20, 20]
3      ``valid_loss``          log(valid loss / valid loss at epoch 0)           [-20, 20]
4      ``train_loss_change``   log(train loss / previous epoch's)                [-5, 5]
5      ``valid_loss_change``   log(valid loss / previous epoch's)                [-5, 5]
6      ``train_loss_spread``   std / mean of the epoch's mini-batch losses       [0, 5]
7      ``generalisation_gap``  log(valid loss / train loss)                      [-20, 20]
=====  ======================  ================================================  ===========

``"relative"`` — ``"standard"`` with the LR read against the episode's base LR instead of
the task's range, so nothing in the observation depends on the task's LR scale (what a
policy that serves any optimizer and base LR needs; use it with ``action_mode="multiplier"``):

=====  ======================  ================================================  ===========
index  name                    meaning                                           bounds
=====  ======================  ================================================  ===========
1      ``lr_ratio``            log(LR / base LR), the base being the LR at       [-10, 10]
                               epoch 0
=====  ======================  ================================================  ===========

Indices 0 and 2–7 are those of ``"standard"``.

``"relative_best"`` — ``"relative"`` and two more: how far the validation loss is above the
best of the run so far, and how long ago that best was: the signals of ReduceLROnPlateau
and early stopping. A policy that only sees the last change cannot tell a loss that is back
at its best from one that is not.

=====  =========================  ================================================  ===========
index  name                       meaning                                           bounds
=====  =========================  ================================================  ===========
8      ``valid_loss_above_best``  log(valid loss / lowest valid loss so far,        [0, 20]
                                  epoch 0's included)
9      ``epochs_since_best``      epochs since that lowest loss, / epoch budget T   [0, 1]
=====  =========================  ================================================  ===========

``"relative_hyper"`` — ``"relative_best"`` and two more: the last move of the LR and the
validation loss's change the epoch before, so a policy can tell whether its own last move
helped (the sign of a hypergradient on log LR: a cut followed by a faster fall helped; a
rise followed by a slower one did not). Without them a cut that lowers the loss reads like
an LR that is right, and bold driver raises it again.

=====  ==============================  ===========================================  ===========
index  name                            meaning                                      bounds
=====  ==============================  ===========================================  ===========
10     ``lr_change``                   log(LR of this epoch / LR of the one         [-10, 10]
                                       before; the base LR at epoch 1)
11     ``valid_loss_change_before``    ``valid_loss_change`` one epoch earlier      [-5, 5]
                                       (0 at epochs 0 and 1)
=====  ==============================  ===========================================  ===========

``"relative_budget"`` — ``"relative_best"`` and the length of one epoch in the budget, so a
formula can follow a shape of the budget's progress from epoch to epoch whatever the budget
(``log s(i/T) − log s((i−1)/T)``), as a tuned schedule anneals over its budget.

=====  ==============================  ===========================================  ===========
index  name                            meaning                                      bounds
=====  ==============================  ===========================================  ===========
10     ``epoch_fraction``              1 / T, one epoch over the epoch budget       [0, 1]
=====  ==============================  ===========================================  ===========

``"relative_peak"`` — ``"relative_budget"`` and the highest LR the run has trained at, so a
policy can keep the LR near one the run has tolerated (as tuned step decay holds its LR through
a jittering loss) while still reading the LR's scale against the base only.

=====  ==============================  ===========================================  ===========
index  name                            meaning                                      bounds
=====  ==============================  ===========================================  ===========
11     ``lr_ratio_peak``               log(highest LR of the epochs trained so      [-10, 10]
                                       far / base LR); 0 at epoch 0
=====  ==============================  ===========================================  ===========

``"minimal"`` — Ψ(ε, i) exactly as posed: the loss so far and the epoch.

=====  ==============  ==========================================  =========
index  name            meaning                                     bounds
=====  ==============  ==========================================  =========
0      ``progress``    i / T                                       [0, 1]
1      ``valid_loss``  ε = log(valid loss / valid loss at epoch 0)  [-20, 20]
=====  ==============  ==========================================  =========

At epoch 0 the changes and the spread are 0 and ``log_lr`` shows the task's ``default_lr``.
Losses are assumed positive (cross-entropy, squared error); the train loss at epoch 0 is the
untrained model's loss on the train split, later ones are the mean of the epoch's batch losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from lrenv.engine import EpochStats


@dataclass(frozen=True)
class Feature:
    name: str
    low: float
    high: float


_LOSS_RATIO = 20.0
_CHANGE = 5.0
_LR_RATIO = 10.0

_STANDARD = (
    Feature("progress", 0.0, 1.0),
    Feature("log_lr", -1.0, 1.0),
    Feature("train_loss", -_LOSS_RATIO, _LOSS_RATIO),
    Feature("valid_loss", -_LOSS_RATIO, _LOSS_RATIO),
    Feature("train_loss_change", -_CHANGE, _CHANGE),
    Feature("valid_loss_change", -_CHANGE, _CHANGE),
    Feature("train_loss_spread", 0.0, 5.0),
    Feature("generalisation_gap", -_LOSS_RATIO, _LOSS_RATIO),
)

_RELATIVE = (_STANDARD[0], Feature("lr_ratio", -_LR_RATIO, _LR_RATIO), *_STANDARD[2:])
_RELATIVE_BEST = (*_RELATIVE, Feature("valid_loss_above_best", 0.0, _LOSS_RATIO), Feature("epochs_since_best", 0.0, 1.0))

FEATURE_SETS: dict[str, tuple[Feature, ...]] = {
    "standard": _STANDARD,
    "relative": _RELATIVE,
    "relative_best": _RELATIVE_BEST,
    "relative_hyper": (*_RELATIVE_BEST, Feature("lr_change", -_LR_RATIO, _LR_RATIO), Feature("valid_loss_change_before", -_CHANGE, _CHANGE)),
    "relative_budget": (*_RELATIVE_BEST, Feature("epoch_fraction", 0.0, 1.0)),
    "relative_peak": (*_RELATIVE_BEST, Feature("epoch_fraction", 0.0, 1.0), Feature("lr_ratio_peak", -_LR_RATIO, _LR_RATIO)),
    "minimal": (
        Feature("progress", 0.0, 1.0),
        Feature("valid_loss", -_LOSS_RATIO, _LOSS_RATIO),
    ),
}

_TINY = 1e-30  # keeps log() finite for a zero loss


def _log(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.maximum(x, _TINY))


class Observer:
    """Builds observations for N runs from their epoch stats and learning rates.

    Args:
        features: Name of a feature set in :data:`FEATURE_SETS`.
        n: Number of runs tracked.
    """

    #: The arrays that hold the runs' loss history: all a checkpoint needs to resume them (a scheduler's state).
    STATE = (
        *("epoch", "epochs", "lr", "base_lr", "log_lr_range", "first_train", "first_valid", "train", "valid"),
        *("best_valid", "best_epoch", "valid_change", "peak_lr"),
    )

    def __init__(self, features: str = "standard", n: int = 1) -> None:
        if not (isinstance(features, str) and features in FEATURE_SETS):
            raise ValueError(f"unknown feature set {features!r}; choose one of {', '.join(FEATURE_SETS)}")
        self.features = features
        self.n = n
        spec = FEATURE_SETS[features]
        self.names: tuple[str, ...] = tuple(f.name for f in spec)
        self.low = np.array([f.low for f in spec], dtype=np.float32)
        self.high = np.array([f.high for f in spec], dtype=np.float32)
        self.space = gym.spaces.Box(self.low, self.high, dtype=np.float32)
        nan = np.full(n, np.nan)
        self.epoch = np.zeros(n, dtype=np.int64)
        self.epochs = np.ones(n, dtype=np.int64)
        self.lr = nan.copy()
        self.base_lr = nan.copy()
        self.log_lr_range = np.stack([nan, nan], 1)
        self.first_train, self.first_valid = nan.copy(), nan.copy()
        self.train, self.valid = nan.copy(), nan.copy()
        self.best_valid = nan.copy()
        self.best_epoch = np.zeros(n, dtype=np.int64)
        self.valid_change = np.zeros(n)
        self.peak_lr = nan.copy()  # the highest LR a run has trained at; NaN before its first epoch

    def reset(
        self,
        runs: Sequence[int] | np.ndarray,
        initial: EpochStats,
        lr: np.ndarray,
        epochs: np.ndarray,
        lr_range: np.ndarray,
    ) -> np.ndarray:
        """Start runs at epoch 0 from their untrained stats.

        Args:
            runs: Which of the N runs start; the other arrays are in this order.
            initial: Epoch-0 stats of those runs.
            lr: Their starting learning rates (the base of ``lr_ratio``).
            epochs: Their epoch budgets T.
            lr_range: ``(len(runs), 2)`` low and high LR of their tasks.

        Returns:
            Observations of those runs, ``(len(runs), n_features)``.
        """
        idx = np.asarray(runs, dtype=np.int64)
        self.epoch[idx] = 0
        self.epochs[idx] = epochs
        self.lr[idx] = lr
        self.base_lr[idx] = lr
        self.log_lr_range[idx] = np.log(np.asarray(lr_range, dtype=np.float64))
        self.first_train[idx] = self.train[idx] = initial.train_loss
        self.first_valid[idx] = self.valid[idx] = self.best_valid[idx] = initial.valid_loss
        self.best_epoch[idx] = 0
        self.valid_change[idx] = 0.0
        self.peak_lr[idx] = np.nan
        zeros = np.zeros(len(idx))
        return self._observe(idx, initial.train_loss, initial.valid_loss, zeros, zeros, zeros, zeros, zeros)

    def update(self, stats: EpochStats, lr: np.ndarray) -> np.ndarray:
        """Advance all N runs by one epoch trained at ``lr``; returns ``(N, n_features)``."""
        idx = np.arange(self.n)
        self.epoch += 1
        lr_change = _log(np.asarray(lr, float)) - _log(self.lr)
        self.lr[:] = lr
        self.peak_lr = np.fmax(self.peak_lr, self.lr)  # fmax: a run's first epoch replaces the NaN
        train_change = _log(stats.train_loss) - _log(self.train)
        valid_change = _log(stats.valid_loss) - _log(self.valid)
        valid_change_before, self.valid_change = self.valid_change, valid_change
        with np.errstate(divide="ignore", invalid="ignore"):
            spread = stats.train_loss_std / np.abs(stats.train_loss)
        self.train, self.valid = np.array(stats.train_loss, float), np.array(stats.valid_loss, float)
        improved = self.valid < self.best_valid  # False for a non-finite loss: it is never the best
        self.best_valid = np.where(improved, self.valid, self.best_valid)
        self.best_epoch = np.where(improved, self.epoch, self.best_epoch)
        return self._observe(idx, self.train, self.valid, train_change, valid_change, spread, lr_change, valid_change_before)

    def _observe(self, idx, train, valid, train_change, valid_change, spread, lr_change, valid_change_before) -> np.ndarray:
        values = {
            "progress": self.epoch[idx] / self.epochs[idx],
            "log_lr": self._scaled_log_lr(idx),
            "lr_ratio": np.log(self.lr[idx] / self.base_lr[idx]),
            "train_loss": _log(train) - _log(self.first_train[idx]),
            "valid_loss": _log(valid) - _log(self.first_valid[idx]),
            "train_loss_change": train_change,
            "valid_loss_change": valid_change,
            "train_loss_spread": spread,
            "generalisation_gap": _log(valid) - _log(train),
            "valid_loss_above_best": _log(valid) - _log(self.best_valid[idx]),
            "epochs_since_best": (self.epoch[idx] - self.best_epoch[idx]) / self.epochs[idx],
            "lr_change": lr_change,
            "valid_loss_change_before": valid_change_before,
            "epoch_fraction": 1.0 / self.epochs[idx],
            "lr_ratio_peak": np.log(np.where(np.isnan(self.peak_lr[idx]), self.lr[idx], self.peak_lr[idx]) / self.base_lr[idx]),
        }
        with np.errstate(divide="ignore", invalid="ignore"):
            obs = np.stack([np.asarray(values[name], dtype=np.float64) for name in self.names], 1)
        # a diverged run's inf/nan must still give a valid observation: clamp to the bounds
        obs = np.nan_to_num(obs, nan=0.0, posinf=np.inf, neginf=-np.inf)
        return np.clip(obs, self.low, self.high).astype(np.float32)

    def _scaled_log_lr(self, idx: np.ndarray) -> np.ndarray:
        low, high = self.log_lr_range[idx, 0], self.log_lr_range[idx, 1]
        return 2.0 * (np.log(self.lr[idx]) - low) / (high - low) - 1.0
