"""The multi-power loss-curve law: its formula, its fit from a few runs, and the schedule it predicts best."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy.optimize import approx_fprime

from lrenv.laws import (
    PARAM_NAMES,
    LossLaw,
    MomentumLaw,
    MultiPowerLaw,
    _final_loss_and_grad,
    _momentum,
    _mpl,
    evaluate_law,
    fit_momentum_law,
    fit_multi_power_law,
    optimal_schedule,
    reference_schedules,
)

T, STEPS, PEAK = 40, 20, 0.1
#: A law on LRs normalised by PEAK: an SGD-like run whose loss falls from about 1.2 to 0.4–0.6.
TRUE = MultiPowerLaw(L0=0.5, A=3.0, alpha=0.5, B=0.4, C=0.05, beta=0.6, gamma=0.6, lr_scale=PEAK, steps_per_epoch=STEPS)
#: The authors' fit for their 400M model (README / src/config.py), in raw LRs (peak 3e-4).
PAPER_400M = dict(L0=2.37474466, A=0.65421216, alpha=0.42878731, B=523.42464371, C=2.02462735, beta=0.59350493, gamma=0.63472457)


def schedules(epochs: int = T, peak: float = PEAK) -> dict[str, np.ndarray]:
    e = np.arange(epochs)
    return {
        "constant": np.full(epochs, peak),
        "cosine": peak / 100 + 0.99 * peak * (1 + np.cos(np.pi * e / epochs)) / 2,
        "step": peak * 0.1 ** ((e >= epochs // 2).astype(int) + (e >= 3 * epochs // 4)),
        "wsd": np.where(e < 0.8 * epochs, peak, peak * (epochs - e) / (0.2 * epochs + 1)),
    }


def observed(law: MultiPowerLaw, lrs: np.ndarray, rng: np.random.Generator, noise: float = 0.002) -> np.ndarray:
    """Losses after epochs 0..T: a made-up initial loss, then the law's with multiplicative noise."""
    return np.concatenate(([2.3], law.predict(lrs) * (1 + noise * rng.standard_normal(len(lrs)))))


def reference_mpl(law: MultiPowerLaw, lrs_per_epoch: np.ndarray) -> np.ndarray:
    """The law per step, written as the paper's double sum, term by term (slow; a few dozen steps only)."""
    eta = np.repeat(np.asarray(lrs_per_epoch) / law.lr_scale, law.steps_per_epoch)  # eta[τ - 1] = η_τ
    out = []
    for t in range(1, len(eta) + 1):
        ld = 0.0
        for k in range(1, t + 1):
            previous = eta[k - 2] if k >= 2 else eta[0]  # η_0 := η_1
            x = eta[k - 1] ** -law.gamma * eta[k - 1 : t].sum()
            ld += (previous - eta[k - 1]) * (1 - (law.C * x + 1) ** -law.beta)
        out.append(law.L0 + law.A * eta[:t].sum() ** -law.alpha - law.B * ld)
    return np.array(out)


# -- the law ---------------------------------------------------------------------------------


def test_predictions_are_the_papers_double_sum():
    law = MultiPowerLaw(L0=1.0, A=2.0, alpha=0.4, B=0.7, C=0.3, beta=0.8, gamma=0.5, lr_scale=0.5, steps_per_epoch=4)
    lrs = np.array([0.1, 0.5, 0.5, 0.2, 0.3, 0.05])  # a rise (warmup) and a rise after a drop too
    steps = reference_mpl(law, lrs)
    np.testing.assert_allclose(law.predict_steps(lrs), steps, rtol=1e-12)
    np.testing.assert_allclose(law.predict(lrs), steps[law.steps_per_epoch - 1 :: law.steps_per_epoch], rtol=1e-12)
    assert law.predict(lrs).shape == (len(lrs),)  # after epochs 1..T, no epoch 0


def test_normalisation_does_not_change_predictions():
    raw = MultiPowerLaw(**PAPER_400M, lr_scale=1.0, steps_per_epoch=50)
    normalised = raw.with_lr_scale(3e-4)
    assert normalised.lr_scale == 3e-4 and normalised.alpha == raw.alpha
    for lrs in schedules(30, 3e-4).values():
        np.testing.assert_allclose(normalised.predict(lrs), raw.predict(lrs), rtol=1e-12)


def test_decayed_schedules_end_lower_than_constant_at_the_same_peak():
    law = MultiPowerLaw(**PAPER_400M, steps_per_epoch=200).with_lr_scale(3e-4)
    curves = {name: law.predict(lrs) for name, lrs in schedules(50, 3e-4).items()}
    for name in ("cosine", "step", "wsd"):
        assert curves[name][-1] < curves["constant"][-1] - 0.005, name
    # WSD is the constant schedule until its decay, which then buys 0.1 in 10 epochs.
    np.testing.assert_allclose(curves["wsd"][:40], curves["constant"][:40], rtol=1e-12)
    assert curves["wsd"][-1] < curves["constant"][-1] - 0.1


def test_jacobian_and_final_loss_gradient_match_finite_differences():
    p, lrs = TRUE.params, schedules()["cosine"] / PEAK
    eta, t = np.repeat(lrs, STEPS), STEPS * np.arange(1, T + 1)
    _, jac = _mpl(p, eta, t, jac=True)
    h = 1e-6
    numeric = np.stack([(_mpl(p * np.exp(e * h), eta, t)[0] - _mpl(p * np.exp(-e * h), eta, t)[0]) / (2 * h) for e in np.eye(7)], axis=1)
    np.testing.assert_allclose(jac, numeric, atol=1e-8)

    u = np.random.default_rng(1).uniform(0.05, 1.0, T)  # rises and drops
    loss, grad = _final_loss_and_grad(p, u, STEPS)
    assert loss == pytest.approx(TRUE.predict(u * PEAK)[-1], rel=1e-12)
    np.testing.assert_allclose(grad, approx_fprime(u, lambda v: _final_loss_and_grad(p, v, STEPS)[0], 1e-7), atol=1e-6)


# -- fitting ---------------------------------------------------------------------------------


def test_fit_from_three_schedules_predicts_the_fourth():
    rng = np.random.default_rng(0)
    runs = {name: (lrs, observed(TRUE, lrs, rng)) for name, lrs in schedules().items()}
    law, report = fit_multi_power_law([runs[name] for name in ("constant", "cosine", "step")], STEPS, restarts=4)

    assert report.r2 > 0.99 and report.n_points == 3 * T and len(report.per_run_rmse) == 3
    assert report.rmse < 0.005 and max(report.per_run_final_rel_error) < 0.01
    assert law.lr_scale == PEAK and law.steps_per_epoch == STEPS
    assert law.fitted_lr_range == pytest.approx((PEAK / 100, PEAK))
    held_out = evaluate_law(law, [runs["wsd"]])
    assert held_out["r2"] > 0.99 and held_out["n_points"] == T
    assert held_out["final_mare"] < 0.02
    run = held_out["runs"][0]
    assert run["final_observed"] == runs["wsd"][1][-1]
    assert abs(run["final_predicted"] - run["final_observed"]) / run["final_observed"] == pytest.approx(run["final_rel_error"])
    # Also against the noiseless truth, on every schedule.
    for lrs in schedules().values():
        np.testing.assert_allclose(law.predict(lrs), TRUE.predict(lrs), rtol=0.02)


def test_fit_is_deterministic_and_drops_the_initial_loss():
    rng = np.random.default_rng(2)
    runs = [(lrs, observed(TRUE, lrs, rng)) for lrs in (schedules(12)["constant"], schedules(12)["step"])]
    first, _ = fit_multi_power_law(runs, STEPS, seed=3, restarts=2)
    again, _ = fit_multi_power_law(runs, STEPS, seed=3, restarts=2)
    without_epoch_0, report = fit_multi_power_law([(lrs, losses[1:]) for lrs, losses in runs], STEPS, seed=3, restarts=2)
    assert first == again == without_epoch_0
    assert report.n_points == 24 and report.restarts == 2


@pytest.mark.parametrize(
    ("runs", "kwargs", "message"),
    [
        ([], {}, "at least one run"),
        ([([0.1, 0.1], [1.0, 0.9, 0.8])], {"steps_per_epoch": 0}, "steps_per_epoch"),
        ([([0.1, 0.1], [1.0, 0.9, 0.8])], {"restarts": 0}, "restarts"),
        ([([0.1, 0.1], [1.0, 0.9, 0.8])], {"huber_delta": -1.0}, "huber_delta"),
        ([([0.1, -0.1], [1.0, 0.9, 0.8])], {}, r"run 0: learning rates must be finite and > 0"),
        ([([0.1, 0.1], [1.0, 0.9, 0.8]), ([0.1, np.nan], [1.0, 0.9, 0.8])], {}, r"run 1: learning rates must be finite"),
        ([([0.1, 0.1], [1.0, 0.0, 0.8])], {}, r"run 0: losses must be finite and > 0"),
        ([([0.1, 0.1], [1.0, np.inf])], {}, r"run 0: losses must be finite"),
        ([([0.1, 0.1], [1.0, 0.9, 0.8, 0.7])], {}, r"run 0: 2 epochs of learning rates need 3 losses .* or 2, got shape \(4,\)"),
        ([([], [])], {}, r"run 0: learning rates must be a non-empty 1-D"),
        ([([0.1, 0.1],)], {}, r"run 0: expected a \(lrs per epoch, losses\) pair"),
        ([(["a", 0.1], [1.0, 0.9])], {}, "run 0: learning rates must be a sequence of numbers"),
    ],
)
def test_bad_runs_raise_a_value_error_that_names_the_problem(runs, kwargs, message):
    kwargs = {"steps_per_epoch": 5, **kwargs}
    steps = kwargs.pop("steps_per_epoch")
    with pytest.raises(ValueError, match=message):
        fit_multi_power_law(runs, steps, **kwargs)
    if "steps_per_epoch" not in message and not kwargs:
        with pytest.raises(ValueError, match=message):
            evaluate_law(TRUE, runs)


def test_bad_laws_and_schedules_raise():
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        MultiPowerLaw(L0=1.0, A=1.0, alpha=-0.5, B=1.0, C=1.0, beta=1.0, gamma=1.0)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        MultiPowerLaw(**PAPER_400M, steps_per_epoch=2.5)
    with pytest.raises(ValueError, match="lrs_per_epoch: learning rates must be finite and > 0"):
        TRUE.predict([0.1, 0.0])
    with pytest.raises(ValueError, match="lr_bounds are needed"):
        optimal_schedule(MultiPowerLaw(**PAPER_400M), 10)
    with pytest.raises(ValueError, match="lr_bounds must be"):
        optimal_schedule(TRUE, 10, (0.1, 0.01))
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        optimal_schedule(TRUE, 0, (0.01, 0.1))


def test_dict_round_trip():
    law = MultiPowerLaw(**PAPER_400M, lr_scale=3e-4, steps_per_epoch=7, fitted_lr_range=(1e-5, 3e-4))
    data = json.loads(json.dumps(law.to_dict()))
    assert data["law"] == "multi_power" and set(PARAM_NAMES) <= set(data)
    assert MultiPowerLaw.from_dict(data) == law
    assert MultiPowerLaw.from_dict(TRUE.to_dict()) == TRUE  # no fitted range
    with pytest.raises(ValueError, match=r"missing \['gamma'\]"):
        MultiPowerLaw.from_dict({k: v for k, v in data.items() if k != "gamma"})
    with pytest.raises(ValueError, match=r"unknown \['delta'\]"):
        MultiPowerLaw.from_dict({**data, "delta": 1.0})
    with pytest.raises(ValueError, match="not a multi_power law"):
        MultiPowerLaw.from_dict({**data, "law": "momentum"})
    # The base reads either kind from its "law" key.
    momentum = MomentumLaw(L0=1.0, A=2.0, alpha=0.5, C=1e-3, decay=0.99, lr_scale=0.1, steps_per_epoch=3, fitted_lr_range=(0.01, 0.1))
    for original in (law, momentum):
        assert LossLaw.from_dict(json.loads(json.dumps(original.to_dict()))) == original
    assert momentum.to_dict()["decay"] == 0.99
    with pytest.raises(ValueError, match="unknown law 'power'"):
        LossLaw.from_dict({**data, "law": "power"})


# -- the schedule it predicts best -----------------------------------------------------------


@pytest.mark.parametrize("monotone", [True, False])
def test_optimal_schedule_beats_every_start_and_decays_at_the_end(monotone):
    low, high = 3e-6, 3e-4
    law = MultiPowerLaw(**PAPER_400M, steps_per_epoch=200, fitted_lr_range=(low, high)).with_lr_scale(high)
    lrs, final = optimal_schedule(law, 40, monotone=monotone)  # bounds: the fitted range
    assert lrs.shape == (40,) and np.all((lrs >= low) & (lrs <= high))
    assert final == pytest.approx(law.predict(lrs)[-1], rel=1e-12)
    for name, start in reference_schedules(40, (low, high)).items():
        assert final <= law.predict(start)[-1] + 1e-12, name
    assert lrs[0] == pytest.approx(high) and lrs[-1] < 0.5 * high
    if monotone:
        assert np.all(np.diff(lrs) <= 1e-12 * high)
        assert final < law.predict(reference_schedules(40, (low, high))["wsd"])[-1] - 1e-4  # it improves on WSD


def test_optimal_schedule_warns_outside_the_fitted_range():
    law = MultiPowerLaw(**PAPER_400M, fitted_lr_range=(1e-4, 3e-4))
    with pytest.warns(UserWarning, match="extrapolation"):
        lrs, _ = optimal_schedule(law, 5, (1e-5, 3e-4))
    assert np.all((lrs >= 1e-5) & (lrs <= 3e-4))


def test_reference_schedules():
    refs = reference_schedules(10, (0.01, 1.0))
    assert set(refs) == {"constant", "cosine", "linear", "wsd", "wsd_mid"}
    for name, lrs in refs.items():
        assert lrs.shape == (10,) and np.all(np.diff(lrs) <= 0) and lrs.min() >= 0.01 - 1e-12, name
    assert refs["cosine"][0] == refs["linear"][0] == refs["wsd"][0] == 1.0
    assert refs["cosine"][-1] == pytest.approx(0.01) and refs["wsd"][-1] == pytest.approx(0.01)
    assert refs["wsd"][7] == 1.0 and refs["wsd_mid"][0] == pytest.approx(0.1)


# -- the momentum law (Tissue et al. 2024), for comparison -----------------------------------

MOMENTUM = MomentumLaw(L0=0.5, A=3.0, alpha=0.5, C=2e-3, decay=0.99, lr_scale=PEAK, steps_per_epoch=STEPS)


def test_momentum_law_is_its_recursion():
    law = dataclasses.replace(MOMENTUM, steps_per_epoch=4)
    lrs = np.array([0.05, 0.1, 0.1, 0.03, 0.06, 0.01])
    eta = np.repeat(lrs / law.lr_scale, law.steps_per_epoch)
    m, s2, expected = 0.0, 0.0, []
    for i in range(len(eta)):
        m = law.decay * m + ((eta[i - 1] if i else eta[0]) - eta[i])
        s2 += m
        expected.append(law.L0 + law.A * eta[: i + 1].sum() ** -law.alpha - law.C * s2)
    np.testing.assert_allclose(law.predict_steps(lrs), expected, rtol=1e-12)
    for lrs in schedules().values():
        np.testing.assert_allclose(law.with_lr_scale(1.0).predict(lrs), law.predict(lrs), rtol=1e-12)


def test_momentum_law_jacobian_and_final_loss_gradient():
    p, eta, t = MOMENTUM.params, np.repeat(schedules()["step"] / PEAK, STEPS), STEPS * np.arange(1, T + 1)
    _, jac = _momentum(p, eta, t, MOMENTUM.decay, jac=True)
    numeric = np.stack(
        [(_momentum(p * np.exp(e * 1e-6), eta, t, MOMENTUM.decay)[0] - _momentum(p * np.exp(-e * 1e-6), eta, t, MOMENTUM.decay)[0]) / 2e-6 for e in np.eye(4)],
        axis=1,
    )
    np.testing.assert_allclose(jac, numeric, atol=1e-8)
    u = np.random.default_rng(4).uniform(0.05, 1.0, T)
    loss, grad = MOMENTUM._final_and_grad(u)
    assert loss == pytest.approx(MOMENTUM.predict(u * PEAK)[-1], rel=1e-12)
    np.testing.assert_allclose(grad, approx_fprime(u, lambda v: MOMENTUM._final_and_grad(v)[0], 1e-7), atol=1e-6)


def test_momentum_fit_and_the_two_laws_compared():
    rng = np.random.default_rng(5)
    runs = {name: (lrs, observed(MOMENTUM, lrs, rng)) for name, lrs in schedules().items()}
    train = [runs[name] for name in ("constant", "cosine", "step")]
    law, report = fit_momentum_law(train, STEPS, decay=MOMENTUM.decay, restarts=3)
    assert isinstance(law, MomentumLaw) and law.decay == MOMENTUM.decay and report.r2 > 0.99
    assert evaluate_law(law, [runs["wsd"]])["final_mare"] < 0.02
    # The other law, fitted on the same runs, goes through the same evaluation and optimisation.
    mpl, _ = fit_multi_power_law(train, STEPS, restarts=2)
    assert set(evaluate_law(mpl, [runs["wsd"]])) == set(evaluate_law(law, [runs["wsd"]]))
    lrs, final = optimal_schedule(law, T)
    assert np.all((lrs >= PEAK / 100) & (lrs <= PEAK)) and np.all(np.diff(lrs) <= 1e-12)
    assert final <= min(law.predict(start)[-1] for start in reference_schedules(T, law.fitted_lr_range).values()) + 1e-12
    with pytest.raises(ValueError, match=r"decay must be a number in \[0, 1\)"):
        fit_momentum_law(train, STEPS, decay=1.0)
