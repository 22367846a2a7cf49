"""A schedule-aware loss-curve law, fitted from a few runs, and the schedule it predicts best.

The multi-power law (MPL) of Luo et al., ICLR 2025, "A Multi-Power Law for Loss Curve Prediction
Across Learning Rate Schedules" (arXiv 2503.12811), predicts the loss after step ``t`` of a run
from the LRs ``η_1 … η_t`` of its steps alone::

    L(t)   = L0 + A · S1(t)^(-α) − LD(t)
    S1(t)  = Σ_{τ=1..t} η_τ                                   (area under the schedule)
    LD(t)  = B · Σ_{k=1..t} (η_{k-1} − η_k) · G(η_k^(-γ) · S_k(t))
    S_k(t) = Σ_{τ=k..t} η_τ,   G(x) = 1 − (C·x + 1)^(-β),   η_0 := η_1

with seven positive parameters ``L0, A, α, B, C, β, γ``. The power term is the loss of a
constant-LR run after the same LR area; ``LD`` is the extra drop each LR decrease buys, which
grows (as a power of the area trained since) towards ``B`` times the decrease.

Conventions in lrenv:

* **A step is one optimizer step.** A run has ``epochs`` epochs of ``steps_per_epoch`` mini-batch
  steps at a constant LR each (lrenv's schedules are per epoch); the law expands the per-epoch
  LRs to steps. The loss is seen once an epoch: the loss after epoch ``e`` is ``L(e · steps_per_epoch)``.
* **The loss at t = 0 is not fitted.** The paper's ``S_W`` (the warmup's LR area, which keeps
  ``S1 + S_W`` positive) is 0 here: warmup epochs are part of the schedule, and their LR increases
  enter ``LD`` as negative drops, as in the authors' code, which sums over the whole schedule,
  warmup included. ``L(0)`` is then infinite, so :meth:`MultiPowerLaw.predict` returns the losses
  after epochs ``1 … T`` and the fit drops a run's initial loss.
* **LRs are normalised.** The law sees ``η / lr_scale``, ``lr_scale`` being the largest LR of the
  fitted runs, so that the same initial guesses serve SGD at 0.1 and Adam at 1e-3. The law is
  scale-equivariant (:meth:`MultiPowerLaw.with_lr_scale` re-expresses it for another scale), so
  the normalisation changes the parameters' values, never the predictions.

The fit (:func:`fit_multi_power_law`) follows the authors': a robust (Huber) loss on log-loss
residuals, here minimised by ``scipy.optimize.least_squares`` over log-parameters from seeded
restarts. :func:`optimal_schedule` minimises the predicted final loss over per-epoch LRs. The law
only knows the schedules it was fitted on: far from them (other LR ranges, other budgets) its
predictions, and so its "optimal" schedule, are extrapolations. In particular it has no notion
of an LR too large to train, so its optimum always sits at the top of the allowed range for most
of the run; ``lr_bounds`` default to the range of LRs the fitted runs used, and the optimum is
non-increasing by default (the law misprices LR rises; see :func:`optimal_schedule`).

Example::

    law, report = fit_multi_power_law([(lrs_a, losses_a), (lrs_b, losses_b)], steps_per_epoch=50)
    law.predict(lrs_c)                          # the loss after each epoch of schedule c
    lrs, final = optimal_schedule(law, epochs=len(lrs_a))

For comparison, :class:`MomentumLaw` (:func:`fit_momentum_law`) is the simpler law of Tissue et
al. 2024, "Scaling Law with Learning Rate Annealing" (arXiv 2408.11029), with the same API:
both derive from :class:`LossLaw`, which :func:`evaluate_law` and :func:`optimal_schedule` take.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import least_squares, minimize

from lrenv.task import check_lr_range, check_positive_int

#: The multi-power law's parameters, in the order of :attr:`MultiPowerLaw.params` and of the fit's vector.
PARAM_NAMES = ("L0", "A", "alpha", "B", "C", "beta", "gamma")
#: Tissue et al.'s per-step decay of the annealing momentum (their λ, typically 0.999).
MOMENTUM_DECAY = 0.999
#: Bounds of the exponents while fitting: wide, but off the degenerate 0 and away from overflow.
EXPONENT_BOUNDS = {"alpha": (1e-3, 5.0), "beta": (1e-3, 10.0), "gamma": (1e-3, 3.0)}
#: The authors' Huber threshold on log-loss residuals: 0.1 % relative error.
HUBER_DELTA = 1e-3
#: A floor on predicted losses before their log: a law that predicts ≤ 0 gets a large residual, not a NaN.
LOSS_FLOOR = 1e-12

Run = tuple[Sequence[float], Sequence[float]]
Model = Callable[..., tuple[np.ndarray, "np.ndarray | None"]]
Data = list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per run: normalised per-step LRs, steps observed, losses


# -- the law ---------------------------------------------------------------------------------


def _mpl(p: np.ndarray, eta: np.ndarray, t: np.ndarray, eta0: float | None = None, jac: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """The MPL at steps ``t`` (1-based) of the per-step LRs ``eta`` (already normalised).

    Only the steps where the LR changes contribute to ``LD``, so a per-epoch schedule costs
    ``len(t) × epochs``, not ``len(t) × steps``. ``eta0`` is the LR before step 1 (default
    ``η_1``: no drop into step 1; the authors' data starts its warmup at 0). With ``jac``, also
    the derivatives of the prediction with respect to the log-parameters (columns in
    :data:`PARAM_NAMES` order).
    """
    L0, A, alpha, B, C, beta, gamma = p
    area = np.concatenate(([0.0], np.cumsum(eta)))  # area[t] = S1(t)
    s1 = area[t]
    drop = np.concatenate(([(eta[0] if eta0 is None else eta0) - eta[0]], eta[:-1] - eta[1:]))  # η_{k-1} − η_k
    k = np.flatnonzero(drop)  # 0-based: step k + 1
    d, eta_k = drop[k], eta[k]
    # S_k(t) = area[t] − area[k-1]; it is ≤ 0 exactly when k > t, where the step has not happened.
    s_kt = np.maximum(s1[:, None] - area[k][None, :], 0.0)
    x = C * eta_k ** (-gamma) * s_kt
    q = (1.0 + x) ** (-beta)
    ld = B * ((1.0 - q) @ d)
    power = A * s1 ** (-alpha)
    pred = L0 + power - ld
    if not jac:
        return pred, None
    dg_x = beta * q / (1.0 + x) * x  # x · G'(x) = ∂G/∂log C
    columns = (
        np.full_like(s1, L0),
        power,
        -alpha * power * np.log(s1),
        -ld,
        -B * (dg_x @ d),
        -B * ((beta * q * np.log1p(x)) @ d),
        B * gamma * ((dg_x * np.log(eta_k)) @ d),
    )
    return pred, np.stack(columns, axis=1)


def _final_loss_and_grad(p: np.ndarray, u: np.ndarray, steps_per_epoch: int) -> tuple[float, np.ndarray]:
    """The MPL's loss after the last epoch of per-epoch LRs ``u`` (normalised), and its gradient in ``u``.

    The final loss alone is O(epochs): the area after each LR change is a suffix sum. This is
    what :func:`optimal_schedule` minimises; it equals ``predict(u)[-1]`` (tested).
    """
    L0, A, alpha, B, C, beta, gamma = p
    rest = steps_per_epoch * np.cumsum(u[::-1])[::-1]  # rest[i] = S_k(N), k the first step of epoch i
    power = A * rest[0] ** (-alpha)
    loss = L0 + power
    grad = np.full(len(u), -alpha * power / rest[0] * steps_per_epoch)
    if len(u) > 1:
        d, v = u[:-1] - u[1:], u[1:]  # the drop into epoch i + 1 and its LR
        x = C * v ** (-gamma) * rest[1:]
        q = (1.0 + x) ** (-beta)
        g = 1.0 - q
        loss -= B * float(d @ g)
        w = d * beta * q / (1.0 + x)  # d · G'(x)
        grad[:-1] -= B * g  # ∂d/∂u_i = +1
        grad[1:] += B * g  # ∂d/∂u_{i+1} = −1
        grad[1:] += B * gamma * w * x / v  # x ∝ v^(-γ)
        grad[1:] -= B * np.cumsum(w * x / rest[1:]) * steps_per_epoch  # x ∝ the area after the drop
    return float(loss), grad


def _momentum(p: np.ndarray, eta: np.ndarray, t: np.ndarray, decay: float = MOMENTUM_DECAY, jac: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Tissue et al.'s law at steps ``t`` (1-based) of the per-step LRs ``eta``, as :func:`_mpl`.

    ``L(t) = L0 + A·S1(t)^(-α) − C·S2(t)``, ``S2(t) = Σ_{i≤t} m_i``, ``m_i = λ·m_{i-1} + (η_{i-1} − η_i)``
    (``m_0 = 0``, ``η_0 := η_1``), i.e. ``S2(t) = Σ_{k≤t} (η_{k-1} − η_k)·(1 − λ^(t-k+1)) / (1 − λ)``.
    """
    L0, A, alpha, C = p
    area = np.concatenate(([0.0], np.cumsum(eta)))
    s1 = area[t]
    drop = np.concatenate(([0.0], eta[:-1] - eta[1:]))
    k = np.flatnonzero(drop)  # 0-based: step k + 1, so t - k steps of momentum by step t
    since = np.maximum(t[:, None] - k[None, :], 0)
    s2 = ((1.0 - decay**since) / (1.0 - decay)) @ drop[k]
    power = A * s1 ** (-alpha)
    pred = L0 + power - C * s2
    if not jac:
        return pred, None
    return pred, np.stack((np.full_like(s1, L0), power, -alpha * power * np.log(s1), -C * s2), axis=1)


def _check_lrs(lrs: object, what: str) -> np.ndarray:
    """Per-epoch LRs as a 1-D float array: at least one, all finite and > 0."""
    try:
        a = np.asarray(lrs, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: learning rates must be a sequence of numbers ({e})") from None
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{what}: learning rates must be a non-empty 1-D sequence, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"{what}: learning rates must be finite and > 0, got {a[~(np.isfinite(a) & (a > 0))][:3].tolist()} among them")
    return a


def _check_losses(losses: object, epochs: int, what: str) -> np.ndarray:
    """A run's losses after epochs 1..T: ``T + 1`` values (the first, before training, is dropped) or ``T``."""
    try:
        a = np.asarray(losses, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: losses must be a sequence of numbers ({e})") from None
    if a.ndim != 1 or len(a) not in (epochs, epochs + 1):
        raise ValueError(f"{what}: {epochs} epochs of learning rates need {epochs + 1} losses (from epoch 0) or {epochs}, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"{what}: losses must be finite and > 0 (the fit is in log space), got {a[~(np.isfinite(a) & (a > 0))][:3].tolist()} among them")
    return a[len(a) - epochs :]


def _check_runs(runs: Sequence[Run]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``runs`` as (LRs [T], losses after epochs 1..T [T]) arrays, or a ValueError that names the run and the problem."""
    if isinstance(runs, (str, bytes)) or not isinstance(runs, (Sequence, np.ndarray)) or len(runs) == 0:
        raise ValueError("need at least one run: a sequence of (lrs per epoch, losses) pairs")
    checked = []
    for i, run in enumerate(runs):
        if not isinstance(run, (Sequence, np.ndarray)) or isinstance(run, (str, bytes)) or len(run) != 2:
            raise ValueError(f"run {i}: expected a (lrs per epoch, losses) pair, got {type(run).__name__}")
        lrs = _check_lrs(run[0], f"run {i}")
        checked.append((lrs, _check_losses(run[1], len(lrs), f"run {i}")))
    return checked


def _positive_float(value: object, what: str) -> float:
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)


class LossLaw:
    """Base of the laws: a loss curve of the per-step LRs, for per-epoch schedules.

    A law is a frozen dataclass whose fields are its parameters (:attr:`param_names`, all > 0,
    fitted), any fixed settings, and ``lr_scale`` (the LR that maps to 1), ``steps_per_epoch``
    and ``fitted_lr_range`` (``(lowest, highest)`` LR of the runs it was fitted on, or None for
    a law written by hand). It implements ``_curve`` (the loss at given steps) and
    ``_final_and_grad`` (the last epoch's loss and its gradient in the normalised per-epoch LRs).
    """

    kind: ClassVar[str]
    param_names: ClassVar[tuple[str, ...]]

    def _check_fields(self) -> None:
        for name in (*self.param_names, "lr_scale"):
            object.__setattr__(self, name, _positive_float(getattr(self, name), name))
        object.__setattr__(self, "steps_per_epoch", check_positive_int(self.steps_per_epoch, "steps_per_epoch"))
        if self.fitted_lr_range is not None:
            object.__setattr__(self, "fitted_lr_range", _check_range(self.fitted_lr_range, "fitted_lr_range"))

    def _curve(self, eta: np.ndarray, t: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _final_and_grad(self, u: np.ndarray) -> tuple[float, np.ndarray]:
        raise NotImplementedError

    @property
    def params(self) -> np.ndarray:
        """The fitted parameters as an array, in :attr:`param_names` order."""
        return np.array([getattr(self, name) for name in self.param_names])

    def predict(self, lrs_per_epoch: Sequence[float]) -> np.ndarray:
        """The predicted loss after each epoch ``1 … T`` of a run at these per-epoch LRs (length T; no epoch 0)."""
        u = _check_lrs(lrs_per_epoch, "lrs_per_epoch") / self.lr_scale
        n = self.steps_per_epoch
        return self._curve(np.repeat(u, n), n * np.arange(1, len(u) + 1))

    def predict_steps(self, lrs_per_epoch: Sequence[float]) -> np.ndarray:
        """The predicted loss after each optimizer step ``1 … T · steps_per_epoch`` (what the fit never sees)."""
        eta = np.repeat(_check_lrs(lrs_per_epoch, "lrs_per_epoch") / self.lr_scale, self.steps_per_epoch)
        return self._curve(eta, np.arange(1, len(eta) + 1))

    def to_dict(self) -> dict[str, Any]:
        """The law as plain JSON numbers, with ``"law"`` naming its kind (``fitted_lr_range`` a list or None)."""
        out: dict[str, Any] = {"law": self.kind}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name == "fitted_lr_range":
                out[f.name] = None if value is None else [float(v) for v in value]
            else:
                out[f.name] = int(value) if f.name == "steps_per_epoch" else float(value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """The law :meth:`to_dict` wrote (on the base: of the kind it names); a ValueError on a wrong kind or keys."""
        kind = data.get("law")
        if cls is LossLaw:
            laws = {law.kind: law for law in (MultiPowerLaw, MomentumLaw)}
            if kind not in laws:
                raise ValueError(f"unknown law {kind!r}: expected one of {sorted(laws)}")
            return laws[kind].from_dict(data)
        if kind is not None and kind != cls.kind:
            raise ValueError(f"not a {cls.kind} law: law={kind!r}")
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        missing, unknown = set(cls.param_names) - set(data), set(data) - names - {"law"}
        if missing or unknown:
            raise ValueError(f"{cls.kind} law dict: missing {sorted(missing)}, unknown {sorted(unknown)}")
        kwargs = {k: v for k, v in data.items() if k in names}
        if kwargs.get("fitted_lr_range") is not None:
            kwargs["fitted_lr_range"] = tuple(kwargs["fitted_lr_range"])
        return cls(**kwargs)


@dataclass(frozen=True)
class MultiPowerLaw(LossLaw):
    """The multi-power law (module docstring) for LRs normalised by ``lr_scale`` and steps of ``steps_per_epoch``.

    Attributes:
        L0, A, alpha, B, C, beta, gamma: the law's parameters (all > 0), for normalised LRs
            ``η / lr_scale`` and time in optimizer steps.
        lr_scale: the LR that maps to 1 (the fit uses the largest LR of its runs).
        steps_per_epoch: optimizer steps in an epoch, each at the epoch's LR.
        fitted_lr_range: ``(lowest, highest)`` LR of the runs the law was fitted on, or None
            (a law written by hand); :func:`optimal_schedule` stays inside it by default.
    """

    kind: ClassVar[str] = "multi_power"
    param_names: ClassVar[tuple[str, ...]] = PARAM_NAMES

    L0: float
    A: float
    alpha: float
    B: float
    C: float
    beta: float
    gamma: float
    lr_scale: float = 1.0
    steps_per_epoch: int = 1
    fitted_lr_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        self._check_fields()

    def _curve(self, eta: np.ndarray, t: np.ndarray) -> np.ndarray:
        return _mpl(self.params, eta, t)[0]

    def _final_and_grad(self, u: np.ndarray) -> tuple[float, np.ndarray]:
        return _final_loss_and_grad(self.params, u, self.steps_per_epoch)

    def with_lr_scale(self, lr_scale: float) -> MultiPowerLaw:
        """The same law (same predictions) with LRs normalised by ``lr_scale`` instead.

        Scaling η by ``1/s`` scales every area by ``1/s``: ``A`` absorbs ``s^α``, ``B`` ``1/s``
        and ``C`` ``s^(1-γ)``; the exponents and ``L0`` do not change.
        """
        ratio = _positive_float(lr_scale, "lr_scale") / self.lr_scale
        return dataclasses.replace(self, A=self.A * ratio ** (-self.alpha), B=self.B * ratio, C=self.C * ratio ** (1.0 - self.gamma), lr_scale=lr_scale)


@dataclass(frozen=True)
class MomentumLaw(LossLaw):
    """Tissue et al.'s law ``L0 + A·S1^(-α) − C·S2`` (see ``_momentum``), on the same conventions as :class:`MultiPowerLaw`.

    ``S2`` sums an "annealing momentum" of the LR drops that decays by ``decay`` (their λ) per
    step; unlike the multi-power law, its loss drop grows with the steps since a drop, not with
    the LR area since. ``decay`` is a setting, not fitted.

    Attributes:
        L0, A, alpha, C: the law's parameters (all > 0).
        decay: λ in [0, 1), per optimizer step.
        lr_scale, steps_per_epoch, fitted_lr_range: as in :class:`MultiPowerLaw`.
    """

    kind: ClassVar[str] = "momentum"
    param_names: ClassVar[tuple[str, ...]] = ("L0", "A", "alpha", "C")

    L0: float
    A: float
    alpha: float
    C: float
    decay: float = MOMENTUM_DECAY
    lr_scale: float = 1.0
    steps_per_epoch: int = 1
    fitted_lr_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        self._check_fields()
        object.__setattr__(self, "decay", _check_decay(self.decay))

    def _curve(self, eta: np.ndarray, t: np.ndarray) -> np.ndarray:
        return _momentum(self.params, eta, t, self.decay)[0]

    def _final_and_grad(self, u: np.ndarray) -> tuple[float, np.ndarray]:
        L0, A, alpha, C = self.params
        n, lam = self.steps_per_epoch, self.decay
        area = n * float(u.sum())
        power = A * area ** (-alpha)
        grad = np.full(len(u), -alpha * power / area * n)
        # The drop into epoch j + 1 has had n·(T − 1 − j) steps of momentum by the end: S2 is linear in u.
        weight = (1.0 - lam ** (n * np.arange(len(u) - 1, 0, -1))) / (1.0 - lam)
        grad[:-1] -= C * weight
        grad[1:] += C * weight
        return float(L0 + power - C * float((u[:-1] - u[1:]) @ weight)), grad

    def with_lr_scale(self, lr_scale: float) -> MomentumLaw:
        """The same law with LRs normalised by ``lr_scale`` instead (``A`` absorbs ``s^α``, ``C`` ``1/s``)."""
        ratio = _positive_float(lr_scale, "lr_scale") / self.lr_scale
        return dataclasses.replace(self, A=self.A * ratio ** (-self.alpha), C=self.C * ratio, lr_scale=lr_scale)


def _check_decay(value: object) -> float:
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value < 1):
        raise ValueError(f"decay must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_range(value: object, what: str) -> tuple[float, float]:
    """``(low, high)`` with 0 < low ≤ high < inf (a range seen in runs may be one LR)."""
    try:
        low, high = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (low, high), got {value!r}") from None
    if not (0 < low <= high < math.inf):
        raise ValueError(f"{what} must be (low, high) with 0 < low <= high < inf, got {value!r}")
    return low, high


# -- fitting ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitReport:
    """How well a fitted law matches the runs it was fitted on (losses after epochs 1..T).

    Attributes:
        r2: coefficient of determination in loss space, over all fitted points.
        rmse: root-mean-square error in loss space.
        n_points: the number of losses fitted (epoch 0 excluded).
        per_run_rmse: each run's RMSE in loss space.
        per_run_final_rel_error: each run's ``|predicted − observed| / observed`` at its last epoch.
        cost: the robust objective at the optimum (least_squares' cost on log residuals).
        restarts: how many starts the fit ran; ``converged``: whether the best one met a tolerance.
    """

    r2: float
    rmse: float
    n_points: int
    per_run_rmse: tuple[float, ...]
    per_run_final_rel_error: tuple[float, ...]
    cost: float
    restarts: int
    converged: bool


def _r2(observed: np.ndarray, predicted: np.ndarray) -> float:
    ss_tot = float(np.sum((observed - observed.mean()) ** 2))
    ss_res = float(np.sum((observed - predicted) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else -math.inf)


def _initial_guess(data: Data, n: int) -> np.ndarray:
    """L0, A, α, B from a reduced law whose LR drops act at once in full (G ≡ 1), as the authors start.

    ``data`` holds each run's (normalised per-step LRs, evaluated steps, losses). The reduced law
    ``L0 + A·S1^(-α) − B·(η_1 − η_t)`` costs O(points) and is fitted from a few L0 guesses, each
    with ``A, α`` from a log-log regression of the excess loss on the area.
    """
    s1 = np.concatenate([np.cumsum(eta)[t - 1] for eta, t, _ in data])
    fall = np.concatenate([eta[0] - eta[t - 1] for eta, t, _ in data])
    y = np.concatenate([loss for _, _, loss in data])
    log_y, y_min = np.log(y), float(y.min())

    def residuals(theta: np.ndarray) -> np.ndarray:
        L0, A, alpha, B = np.exp(theta)
        return np.log(np.maximum(L0 + A * s1 ** (-alpha) - B * fall, LOSS_FLOOR)) - log_y

    best, best_cost = None, math.inf
    for share in (0.3, 0.6, 0.9):
        L0 = share * y_min
        slope, intercept = np.polyfit(np.log(s1), np.log(y - L0), 1) if len(np.unique(s1)) > 1 else (-0.5, np.log(y.mean() - L0))
        alpha = float(np.clip(-slope, 0.05, 2.0))
        theta0 = np.log([L0, math.exp(intercept), alpha, 0.1 * y_min])
        res = least_squares(residuals, theta0, method="trf", max_nfev=200 * n)
        if res.cost < best_cost:
            best, best_cost = res.x, res.cost
    return np.exp(best)


def _fit(model: Model, data: Data, base: np.ndarray, bounds: np.ndarray, spread: np.ndarray, seed: int, restarts: int, huber_delta: float | None) -> Any:
    """The best ``least_squares`` result over log-parameters for ``model`` on ``data``.

    Restart 0 starts at ``base`` (log-parameters); the others at ``base`` plus uniform noise in
    ``±spread``, drawn from ``seed``. ``bounds`` holds a (low, high) row per parameter.
    """
    log_y = np.concatenate([np.log(losses) for _, _, losses in data])

    def residuals(theta: np.ndarray) -> np.ndarray:
        p = np.exp(theta)
        return np.log(np.maximum(np.concatenate([model(p, eta, t)[0] for eta, t, _ in data]), LOSS_FLOOR)) - log_y

    def jacobian(theta: np.ndarray) -> np.ndarray:
        p = np.exp(theta)
        blocks = []
        for eta, t, _ in data:
            pred, jac = model(p, eta, t, jac=True)
            # d log(pred) / d log(p); a prediction on the floor has no gradient.
            blocks.append(np.where((pred > LOSS_FLOOR)[:, None], jac / np.maximum(pred, LOSS_FLOOR)[:, None], 0.0))
        return np.concatenate(blocks)

    lower, upper = np.log(bounds[:, 0]), np.log(bounds[:, 1])
    rng = np.random.default_rng(seed)
    loss_kwargs = {"loss": "linear"} if huber_delta is None else {"loss": "huber", "f_scale": huber_delta}
    best = None
    for r in range(restarts):
        theta0 = base + (rng.uniform(-1, 1, len(base)) * spread if r > 0 else 0.0)
        theta0 = np.clip(theta0, lower + 1e-9, upper - 1e-9)
        res = least_squares(residuals, theta0, jac=jacobian, bounds=(lower, upper), method="trf", x_scale="jac", max_nfev=300, **loss_kwargs)
        if best is None or res.cost < best.cost:
            best = res
    return best


def _fit_runs(
    runs: Sequence[Run],
    steps_per_epoch: int,
    restarts: int,
    huber_delta: float | None,
    fit: Callable[[Data, int, int, float | None], tuple[np.ndarray, Any]],
    make_law: Callable[..., LossLaw],
) -> tuple[Any, FitReport]:
    """Check the runs and settings, normalise and expand the LRs, fit, and report: what both fits share."""
    checked = _check_runs(runs)
    n = check_positive_int(steps_per_epoch, "steps_per_epoch")
    restarts = check_positive_int(restarts, "restarts")
    if huber_delta is not None:
        huber_delta = _positive_float(huber_delta, "huber_delta")
    lr_scale = max(float(lrs.max()) for lrs, _ in checked)
    lr_min = min(float(lrs.min()) for lrs, _ in checked)
    data = [(np.repeat(lrs / lr_scale, n), n * np.arange(1, len(lrs) + 1), losses) for lrs, losses in checked]
    p, best = fit(data, n, restarts, huber_delta)
    law = make_law(*p, lr_scale=lr_scale, steps_per_epoch=n, fitted_lr_range=(lr_min, lr_scale))
    preds = [law._curve(eta, t) for eta, t, _ in data]
    observed = np.concatenate([losses for _, _, losses in data])
    predicted = np.concatenate(preds)
    report = FitReport(
        r2=_r2(observed, predicted),
        rmse=float(np.sqrt(np.mean((observed - predicted) ** 2))),
        n_points=int(observed.size),
        per_run_rmse=tuple(float(np.sqrt(np.mean((losses - pred) ** 2))) for (_, _, losses), pred in zip(data, preds)),
        per_run_final_rel_error=tuple(float(abs(pred[-1] - losses[-1]) / losses[-1]) for (_, _, losses), pred in zip(data, preds)),
        cost=float(best.cost),
        restarts=restarts,
        converged=bool(best.status > 0),
    )
    return law, report


def _bounds(data: Data, names: Sequence[str]) -> np.ndarray:
    """Fit bounds: L0 up to the largest loss, amplitudes and scales over 24 decades, the exponents in :data:`EXPONENT_BOUNDS`."""
    y_max = max(float(losses.max()) for _, _, losses in data)
    wide = {"L0": (1e-9 * y_max, y_max), **EXPONENT_BOUNDS}
    return np.array([wide.get(name, (1e-12, 1e12)) for name in names])


def fit_multi_power_law(
    runs: Sequence[Run],
    steps_per_epoch: int,
    *,
    seed: int = 0,
    restarts: int = 8,
    huber_delta: float | None = HUBER_DELTA,
) -> tuple[MultiPowerLaw, FitReport]:
    """Fit the multi-power law to a few runs (typically ≤ 5, with different schedules).

    Minimises a Huber loss (threshold ``huber_delta``, None for plain least squares) on the
    residuals ``log(observed) − log(predicted)`` of every loss after epochs ``1 … T`` (the loss
    at epoch 0 is dropped: the law makes it infinite), with ``scipy.optimize.least_squares`` over
    the log-parameters (so all stay > 0) and the analytic Jacobian. Restart 0 starts from a
    reduced law's fit (``_initial_guess``) with ``C, β, γ = 1/steps_per_epoch, 0.5, 0.5``; the
    others perturb it at random from ``seed``. The best restart wins; the fit is deterministic
    for a seed.

    Runs with a constant LR inform only ``L0, A, α``: the drop term needs runs whose LR changes.

    Args:
        runs: ``(lrs, losses)`` pairs: the LR of each of the run's T epochs, and its losses after
            epochs 0..T (T + 1 values, the first dropped) or 1..T (T values). All > 0 and finite.
        steps_per_epoch: optimizer steps per epoch (all runs share it).
        seed: seeds the restarts' perturbations.
        restarts: number of starts (≥ 1).
        huber_delta: the Huber threshold on log residuals (the authors': 1e-3), or None.

    Returns:
        The law (with ``lr_scale`` the largest LR of the runs and ``fitted_lr_range`` their LR
        range) and a :class:`FitReport` on the fitted runs.

    Raises:
        ValueError: no runs, a run whose LRs or losses are not finite and > 0, or whose losses'
            length is neither T nor T + 1; a bad ``steps_per_epoch``, ``restarts`` or ``huber_delta``.
    """

    def fit(data: Data, n: int, restarts: int, huber_delta: float | None) -> tuple[np.ndarray, Any]:
        L0, A, alpha, B = _initial_guess(data, n)
        base = np.log([L0, A, alpha, B, 1.0 / n, 0.5, 0.5])
        # L0 within ±20 %, A and B within ×/÷ 3, C over four decades, the exponents within ×/÷ 2.
        spread = np.log([1.2, 3.0, 2.0, 3.0, 100.0, 2.0, 2.0])
        best = _fit(_mpl, data, base, _bounds(data, PARAM_NAMES), spread, seed, restarts, huber_delta)
        return np.exp(best.x), best

    return _fit_runs(runs, steps_per_epoch, restarts, huber_delta, fit, MultiPowerLaw)


def fit_momentum_law(
    runs: Sequence[Run],
    steps_per_epoch: int,
    *,
    decay: float = MOMENTUM_DECAY,
    seed: int = 0,
    restarts: int = 8,
    huber_delta: float | None = HUBER_DELTA,
) -> tuple[MomentumLaw, FitReport]:
    """Fit Tissue et al.'s momentum law (``decay`` fixed) to a few runs, exactly as :func:`fit_multi_power_law`.

    Restart 0 starts from the same reduced law, with ``C`` such that a drop's effect after one
    epoch matches the reduced law's; the others perturb it at random from ``seed``.

    Raises:
        ValueError: as :func:`fit_multi_power_law`, and a ``decay`` outside [0, 1).
    """
    decay = _check_decay(decay)

    def model(p: np.ndarray, eta: np.ndarray, t: np.ndarray, jac: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        return _momentum(p, eta, t, decay, jac)

    def fit(data: Data, n: int, restarts: int, huber_delta: float | None) -> tuple[np.ndarray, Any]:
        L0, A, alpha, B = _initial_guess(data, n)
        base = np.log([L0, A, alpha, B * (1.0 - decay) / (1.0 - decay**n)])
        spread = np.log([1.2, 3.0, 2.0, 100.0])
        best = _fit(model, data, base, _bounds(data, MomentumLaw.param_names), spread, seed, restarts, huber_delta)
        return np.exp(best.x), best

    return _fit_runs(runs, steps_per_epoch, restarts, huber_delta, fit, lambda *p, **kw: MomentumLaw(*p, decay=decay, **kw))


def evaluate_law(law: LossLaw, runs: Sequence[Run]) -> dict[str, Any]:
    """How well ``law`` predicts runs it was not fitted on (losses after epochs 1..T, as in the fit).

    Returns:
        ``r2`` and ``rmse`` over all points (loss space), ``n_points``, ``final_mare``: the mean
        of ``|predicted − observed| / observed`` over the runs' final losses, and ``runs``: per
        run, ``final_predicted``, ``final_observed``, ``final_rel_error`` and ``rmse``.

    Raises:
        ValueError: as :func:`fit_multi_power_law` for bad runs.
    """
    checked = _check_runs(runs)
    per_run, observed, predicted = [], [], []
    for lrs, losses in checked:
        pred = law.predict(lrs)
        observed.append(losses)
        predicted.append(pred)
        per_run.append(
            {
                "final_predicted": float(pred[-1]),
                "final_observed": float(losses[-1]),
                "final_rel_error": float(abs(pred[-1] - losses[-1]) / losses[-1]),
                "rmse": float(np.sqrt(np.mean((pred - losses) ** 2))),
            }
        )
    obs, pred = np.concatenate(observed), np.concatenate(predicted)
    return {
        "r2": _r2(obs, pred),
        "rmse": float(np.sqrt(np.mean((obs - pred) ** 2))),
        "n_points": int(obs.size),
        "final_mare": float(np.mean([r["final_rel_error"] for r in per_run])),
        "runs": per_run,
    }


# -- the schedule the law likes best ---------------------------------------------------------


def reference_schedules(epochs: int, lr_bounds: tuple[float, float]) -> dict[str, np.ndarray]:
    """The usual schedules between ``low`` and ``high``, per epoch: :func:`optimal_schedule`'s starts.

    ``constant`` (at high), ``cosine`` and ``linear`` (high to low, reaching low in the last
    epoch), ``wsd`` (high for the first 80 %, then linearly down to low) and ``wsd_mid`` (the
    same at the geometric mid-point of the range). All are non-increasing.
    """
    epochs = check_positive_int(epochs, "epochs")
    low, high = check_lr_range(lr_bounds, "lr_bounds")
    frac = np.arange(epochs) / max(epochs - 1, 1)
    decay = max(1, round(0.2 * epochs))

    def wsd(peak: float) -> np.ndarray:
        return np.concatenate([np.full(epochs - decay, peak), np.linspace(peak, low, decay + 1)[1:]]) if epochs > 1 else np.full(1, peak)

    return {
        "constant": np.full(epochs, high),
        "cosine": low + (high - low) * (1 + np.cos(np.pi * frac)) / 2,
        "linear": high + (low - high) * frac,
        "wsd": wsd(high),
        "wsd_mid": wsd(math.sqrt(low * high)),
    }


def optimal_schedule(
    law: LossLaw,
    epochs: int,
    lr_bounds: tuple[float, float] | None = None,
    *,
    monotone: bool = True,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """The per-epoch LRs in ``lr_bounds`` that minimise the law's predicted loss after the last epoch.

    Minimises over the log-LRs with L-BFGS-B (bounds, the analytic gradient) from each of
    :func:`reference_schedules` and one random non-increasing schedule (from ``seed``), and
    keeps the best, starts included, so the result is never worse than any start.

    The law is an extrapolation away from its data: it has no notion of an LR too large to
    train, and it was fitted at some budgets only. ``lr_bounds`` therefore default to the LR
    range of the fitted runs (``law.fitted_lr_range``); wider bounds warn. Trust the optimum for
    budgets and ranges near the fitted runs', and check it with a real run.

    ``monotone`` defaults to True, as in the authors' optimizer, because the multi-power law
    misprices LR rises: a rise counts as a negative drop whose ``G`` is evaluated at the (high)
    new LR, so it costs less than the drop before it gained, and without the constraint the
    optimum is a saw-tooth between the bounds that no real run would reward.

    Args:
        law: the fitted law (either kind).
        epochs: the budget T.
        lr_bounds: ``(low, high)``, 0 < low < high; default ``law.fitted_lr_range``.
        monotone: only non-increasing schedules (default; see above). False allows any.
        seed: seeds the random start.

    Returns:
        ``(lrs, predicted final loss)``: T LRs in ``[low, high]`` and ``law.predict(lrs)[-1]``.

    Raises:
        ValueError: a bad ``epochs`` or ``lr_bounds``; no bounds for a law without a fitted range.
    """
    epochs = check_positive_int(epochs, "epochs")
    if lr_bounds is None:
        if law.fitted_lr_range is None:
            raise ValueError("lr_bounds are needed: the law has no fitted_lr_range to default to")
        lr_bounds = law.fitted_lr_range
    low, high = check_lr_range(lr_bounds, "lr_bounds")
    if law.fitted_lr_range is not None and (low < law.fitted_lr_range[0] * (1 - 1e-9) or high > law.fitted_lr_range[1] * (1 + 1e-9)):
        warnings.warn(
            f"lr_bounds {lr_bounds} leave the LR range the law was fitted on {law.fitted_lr_range}: its optimum there is an extrapolation",
            stacklevel=2,
        )
    z_low, z_high = math.log(low / law.lr_scale), math.log(high / law.lr_scale)

    # Variables: the log-LRs, or (monotone) the first log-LR and the non-negative falls after
    # it, the log-LRs clipped at the floor (no gradient through a clipped epoch).
    def to_log_lrs(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not monotone:
            return v, np.ones(epochs, dtype=bool)
        z = v[0] - np.concatenate(([0.0], np.cumsum(v[1:])))
        return np.maximum(z, z_low), z > z_low

    def objective(v: np.ndarray) -> tuple[float, np.ndarray]:
        z, free = to_log_lrs(v)
        u = np.exp(z)
        loss, grad_u = law._final_and_grad(u)
        g = grad_u * u * free  # d/dz, zero where clipped
        if not monotone:
            return loss, g
        return loss, np.concatenate(([g.sum()], -np.cumsum(g[::-1])[::-1][1:]))

    def from_log_lrs(z: np.ndarray) -> np.ndarray:
        return z if not monotone else np.concatenate(([z[0]], np.maximum(-np.diff(z), 0.0)))

    bounds = [(z_low, z_high)] * epochs if not monotone else [(z_low, z_high)] + [(0.0, z_high - z_low)] * (epochs - 1)
    rng = np.random.default_rng(seed)
    starts = list(reference_schedules(epochs, (low, high)).values())
    starts.append(np.sort(np.exp(rng.uniform(math.log(low), math.log(high), epochs)))[::-1])
    best_v, best_loss = None, math.inf
    for lrs in starts:
        v0 = np.clip(from_log_lrs(np.log(np.clip(lrs, low, high) / law.lr_scale)), [b[0] for b in bounds], [b[1] for b in bounds])
        res = minimize(objective, v0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12})
        for v, loss in ((v0, objective(v0)[0]), (res.x, float(res.fun))):
            if loss < best_loss:
                best_v, best_loss = v, loss
    lrs = np.clip(np.exp(to_log_lrs(best_v)[0]) * law.lr_scale, low, high)
    return lrs, float(law.predict(lrs)[-1])
