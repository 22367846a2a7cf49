import numpy as np
import pytest

from lrenv import load_policy
from lrenv.agents import evolve
from lrenv.env import FEATURE_SETS
from lrenv.formula import formula_policy


def _config(tmp_path):
    path = tmp_path / "dist.yaml"
    path.write_text(
        "populations:\n"
        "  - {task: Digits-MLP-v0, n_envs: 1, task_config: {epochs: 3}}\n"
        "  - {task: Digits-MLP-v0, n_envs: 1, task_config: {epochs: 4, optimizer: adam, default_lr: 0.001, lr_range: [1.0e-5, 0.1]}}\n"
        "env: {relative_factor: 30.0, base_lr_spread: 10.0}\n"
    )
    return path


@pytest.mark.parametrize("name", sorted(evolve.FAMILIES))
def test_each_family_maps_the_unit_box_onto_its_constants_and_starts_where_it_says(name):
    family = evolve.FAMILIES[name]
    constants = evolve.to_constants(evolve.to_unit(family.start, family.bounds), family.bounds)
    assert constants == pytest.approx(family.start)
    assert evolve.to_constants(np.full(len(family.bounds), 2.0), family.bounds) == {k: hi for k, (_, hi) in family.bounds.items()}
    policy = load_policy_of(family.expression(family.start), family.features)
    obs = np.abs(np.random.default_rng(0).normal(size=(5, len(FEATURE_SETS[family.features])))) * 0.1
    if name in ("tolerant", "split", "gap"):  # they start where the bold search ended (two reactions make bold's tanh)
        bold = {"beta": 0.8, "grow": -0.0065, "react": 1.0, "sharp": 20.0, "anneal": 0.21, "speed": 1.11}
        assert policy.model.formula(obs) == pytest.approx(load_policy_of(evolve.FAMILIES["bold"].expression(bold)).model.formula(obs))
    elif name == "best":  # bold's gains: a loss above its best cuts as bold cuts a rise of that size
        bold = parent_at_start(family, "bold")
        rose = obs.copy()
        rose[:, 5] = rose[:, 8]  # the loss rose from its best by exactly that much
        assert policy.model.formula(rose) == pytest.approx(bold.model.formula(rose[:, :8]))
        at_best = rose.copy()
        at_best[:, 8] = 0.0
        assert (policy.model.formula(at_best) > policy.model.formula(rose)).all()
    elif name == "patience":  # best's pick: an epoch after the best, its cut is best's
        previous = parent_at_start(family, "best", "relative_best")
        obs[:, 9] = 0.05
        assert policy.model.formula(obs) == pytest.approx(previous.model.formula(obs), rel=1e-3)
        just_now = obs.copy()
        just_now[:, 9] = 0.0  # the best was this epoch: no cut yet
        assert (policy.model.formula(just_now) > policy.model.formula(obs)).all()
    elif name == "remember":  # the first default Ψ of psi.yaml with a fixed memory; a falling loss lengthens it
        fixed = parent_at_start(family, "patience", "relative_best")
        assert policy.model.formula(obs) == pytest.approx(fixed.model.formula(obs))
        fell = obs.copy()
        fell[:, 1], fell[:, 5] = 1.0, -0.2  # a raised level, and the loss fell 18 %
        longer = load_policy_of(family.expression({**family.start, "hold": 0.1}), "relative_best")
        assert longer.model.formula(fell) == pytest.approx(policy.model.formula(fell) * np.exp(0.1 * np.tanh(38.59 * 0.2)))
    elif name == "gated":  # the first default Ψ of psi.yaml (a patience formula) with no gate; a falling train loss softens the cut
        ungated = parent_at_start(family, "patience", "relative_best")
        assert policy.model.formula(obs) == pytest.approx(ungated.model.formula(obs))
        above = obs.copy()
        above[:, 8], above[:, 9], above[:, 4] = 0.05, 0.1, -0.2  # above its best, and the train loss fell 18 %
        gated = load_policy_of(family.expression({**family.start, "learning": 10.0}), "relative_best")
        assert (gated.model.formula(above) > policy.model.formula(above)).all()
    elif name == "hyper":  # the default Ψ of psi.yaml; push moves the LR on where its last move sped the fall up
        default = parent_at_start(family, "patience", "relative_best")
        assert policy.model.formula(obs) == pytest.approx(default.model.formula(obs[:, :10]))
        pushed = load_policy_of(family.expression({**family.start, "push": 1.0}), "relative_hyper")
        helped, hurt = obs.copy(), obs.copy()
        helped[:, 10], helped[:, 11], helped[:, 5] = -0.7, -0.05, -0.2  # a cut, then the loss fell faster
        hurt[:, 10], hurt[:, 11], hurt[:, 5] = 0.7, -0.2, -0.05  # a rise, then it fell slower
        assert (pushed.model.formula(helped) < policy.model.formula(helped)).all()  # cut again
        assert (pushed.model.formula(hurt) < policy.model.formula(hurt)).all()  # and undo the rise
    elif name == "phased":  # the first default Ψ of psi.yaml; calm weakens an early cut, fade a late rise
        default = parent_at_start(family, "patience", "relative_best")
        assert policy.model.formula(obs) == pytest.approx(default.model.formula(obs))
        cut = obs.copy()
        cut[:, 5], cut[:, 8], cut[:, 9] = 0.0, 0.05, 0.1  # above its best for a while, no fall
        calm = load_policy_of(family.expression({**family.start, "calm": 1.0}), "relative_best")
        early, late = cut.copy(), cut.copy()
        early[:, 0], late[:, 0] = 0.0, 1.0
        assert (calm.model.formula(early) > policy.model.formula(early)).all()  # no cut at the start
        assert calm.model.formula(late) == pytest.approx(policy.model.formula(late))  # the full cut at the end
        fell = obs.copy()
        fell[:, 0], fell[:, 5] = 1.0, -0.2
        faded = load_policy_of(family.expression({**family.start, "fade": 1.0}), "relative_best")
        assert (faded.model.formula(fell) < policy.model.formula(fell)).all()  # no rise at the end
    elif name.startswith("settle"):
        check_settle_family(name, family, policy, obs)
    else:  # the base LR, constant: ratio 1 whatever the losses, once the LR is the base
        obs[:, 1] = 0.0  # lr_ratio
        assert policy.model.formula(obs) == pytest.approx(np.ones(5))


def check_settle_family(name, family, policy, obs):
    """The settle families: the controller until it settles, then each family's end."""
    if name == "settle":  # the default Ψ of psi.yaml until it settles; then a cosine from the level it reached, whatever the losses
        patience = evolve.FAMILIES["patience"]
        default = load_policy_of(patience.expression({**family.start, "anneal": 0.0, "speed": 1.0}), "relative_best")
        obs[:, 0], obs[:, 10] = 0.3, 0.05  # before half the budget of 20 epochs
        assert policy.model.formula(obs) == pytest.approx(default.model.formula(obs[:, :10]))
        late = obs.copy()
        late[:, 0], late[:, 1] = 0.75, 1.5  # half-way through the cosine, the LR at e^1.5 times the base
        late[:, 4:10] = np.random.default_rng(1).normal(size=(5, 6)) * 0.1
        step = 0.5 * 4.6 * (np.cos(np.pi * 0.5) - np.cos(np.pi * 0.4))
        assert policy.model.formula(late) == pytest.approx(np.full(5, np.exp(1.5 + step)))
    elif name == "settle_eased":  # the shipped settle default with no easing; a falling train loss eases the pull
        plain = parent_at_start(family, "settle", "relative_budget")
        assert policy.model.formula(obs) == pytest.approx(plain.model.formula(obs))
        learning = obs.copy()
        learning[:, 0], learning[:, 4], learning[:, 5], learning[:, 8] = 0.3, -0.2, 0.0, 0.0  # train loss fell 18 %, validation flat at its best
        eased = load_policy_of(family.expression({**family.start, "ease": 1.0}), "relative_budget")
        grow = family.start["grow"] * np.tanh(family.start["feel"] * 0.2)  # the part of the pull that eases
        assert eased.model.formula(learning) == pytest.approx(policy.model.formula(learning) * np.exp(-grow))
    elif name == "settle_gated":  # the shipped settle default with no gate; a falling train loss softens the cut
        ungated = parent_at_start(family, "settle", "relative_budget")
        assert policy.model.formula(obs) == pytest.approx(ungated.model.formula(obs))
        above = obs.copy()
        above[:, 0], above[:, 8], above[:, 9], above[:, 4] = 0.3, 0.05, 0.1, -0.2  # above its best, and the train loss fell 18 %
        gated = load_policy_of(family.expression({**family.start, "learning": 10.0}), "relative_budget")
        assert (gated.model.formula(above) > policy.model.formula(above)).all()
    elif name == "settle_step":  # the default Ψ of psi.yaml until max(0.5, 8/T); then two 10x drops, whatever the losses
        settle = evolve.FAMILIES["settle"]
        controller = {k: family.start[k] for k in settle.bounds if k != "depth"}
        obs[:, 0], obs[:, 10] = 0.3, 0.05  # before half the budget of 20 epochs
        assert policy.model.formula(obs) == pytest.approx(load_policy_of(settle.expression({**controller, "depth": 4.6}), "relative_budget").model.formula(obs))
        short = obs.copy()
        short[:, 0], short[:, 10] = 0.6, 0.1  # a budget of 10 epochs keeps 8 to find its level
        still = load_policy_of(settle.expression({**controller, "settle": 0.95, "depth": 4.6}), "relative_budget")
        assert policy.model.formula(short) == pytest.approx(still.model.formula(short))
        late = obs.copy()
        late[:, 1] = 1.5  # the LR at e^1.5 times the base
        late[:, 4:10] = np.random.default_rng(1).normal(size=(5, 6)) * 0.1
        for progress, step in ((0.55, -2.3), (0.65, 0.0), (0.8, -2.3), (0.95, 0.0)):  # drops at 0.5 and 0.75 of 20 epochs
            late[:, 0] = progress
            assert policy.model.formula(late) == pytest.approx(np.full(5, np.exp(1.5 + step)))
    elif name == "settle_drop":  # the shipped default; a drop where it settles, then the cosine from the dropped level
        starts_at_the_shipped_settle(family, policy, obs)
        dropped = load_policy_of(family.expression({**family.start, "settle": 0.5, "warm": 8.0, "drop": 2.3}), "relative_budget")
        late = obs.copy()
        late[:, 1] = 1.5
        late[:, 4:10] = np.random.default_rng(1).normal(size=(5, 6)) * 0.1
        cosine = lambda u: 0.5 * 4.6 * np.cos(np.pi * u)  # noqa: E731
        for progress, step in ((0.55, -2.3 + cosine(0.1) - cosine(0.0)), (0.75, cosine(0.5) - cosine(0.4))):
            late[:, 0] = progress
            assert dropped.model.formula(late) == pytest.approx(np.full(5, np.exp(1.5 + step)))
    elif name == "settle_plateau":  # the shipped default; after it settles, a loss above its best cuts by up to e^-plateau
        shipped = starts_at_the_shipped_settle(family, policy, obs)
        cutting = load_policy_of(family.expression({**family.start, "plateau": 2.3}), "relative_budget")
        early, late = obs.copy(), obs.copy()
        early[:, 0], late[:, 0] = 0.5, 0.8  # before and after it settles at 0.7
        for o in (early, late):
            o[:, 8], o[:, 9] = 0.05, 0.1  # above its best for two epochs
        assert cutting.model.formula(early) == pytest.approx(shipped.model.formula(early))
        cut = 2.3 * np.tanh(family.start["sharp"] * 0.05) * np.tanh(family.start["patience"] * 0.1)
        assert cutting.model.formula(late) == pytest.approx(shipped.model.formula(late) * np.exp(-cut))
        late[:, 8], late[:, 9] = 0.0, 0.0  # back at its best: no cut
        assert cutting.model.formula(late) == pytest.approx(shipped.model.formula(late))
    elif name == "settle_gap":  # the shipped default; at half the budget a drop as large as the run overfits
        shipped = starts_at_the_shipped_settle(family, policy, obs)
        dropping = load_policy_of(family.expression({**family.start, "drop": 2.3}), "relative_budget")
        at_half = obs.copy()
        at_half[:, 0] = 0.55  # the first epoch past half of 20
        at_half[:, 7] = [0.0, 0.25, 0.35, 0.5, 2.0]  # log(L_valid / L_train)
        drop = 2.3 * np.tanh(10.0 * np.maximum(at_half[:, 7] - 0.25, 0.0))
        assert dropping.model.formula(at_half) == pytest.approx(shipped.model.formula(at_half) * np.exp(-drop))
        assert drop[:2].max() == 0.0 and drop[-1] == pytest.approx(2.3)  # no gap: no drop; a large one: all of it
        later = at_half.copy()
        later[:, 0] = 0.65  # one drop only
        assert dropping.model.formula(later) == pytest.approx(shipped.model.formula(later))
    elif name == "settle_gap_stall":  # settle_gap's drop, held back in a run at its best
        gap = evolve.FAMILIES["settle_gap"]
        at_half = obs.copy()
        at_half[:, 0], at_half[:, 10] = 0.55, 0.05  # the first epoch past half of 20
        at_half[:, 7] = 1.0  # overfitting by the gap: all of the drop
        at_half[:, 9] = [0.0, 0.0, 0.05, 0.1, 0.5]  # at its best, or 1, 2, 10 epochs after it
        dropping = parent_at_start(family, "settle_gap", "relative_budget")
        held = np.tanh(family.start["patience"] * at_half[:, 9])  # the part of the drop that is left
        gap_drop = dropping.model.formula(at_half) / load_policy_of(gap.expression(gap.start), "relative_budget").model.formula(at_half)
        assert policy.model.formula(at_half) == pytest.approx(dropping.model.formula(at_half) * gap_drop ** (held - 1))
        assert held[:2].max() == 0.0 and held[2:].min() > 0.99  # at its best: no drop; an epoch after it: all of it
        unheld = load_policy_of(family.expression({**family.start, "still": 0.0}), "relative_budget")
        assert unheld.model.formula(at_half) == pytest.approx(dropping.model.formula(at_half))  # still 0: settle_gap
    elif name in ("settle_floor", "settle_ratchet", "settle_latch", "settle_band", "settle_sign", "settle_climb", "settle_fade"):
        check_floored_family(name, family, policy, obs)
    else:
        pytest.fail(f"no check for the family {name}")


def check_floored_family(name, family, policy, obs):
    """The families with a floor under the controller (``relative_peak`` features)."""
    if name == "settle_floor":  # the present default (settle_gap_stall) with a floor under its controller until the drop
        shipped = parent_at_start(family, "settle_gap_stall", "relative_budget")
        obs[:, 0], obs[:, 10] = 0.3, 0.05  # before the drop at 0.45 of 20 epochs
        obs[:, 11] = obs[:, 1]  # the LR is at its peak: the controller, even cutting, stays above e^-2 of it
        assert policy.model.formula(obs) == pytest.approx(shipped.model.formula(obs[:, :11]))
        high = obs.copy()
        high[:, 11] = 3.0  # the run trained at e^3 times the base before: the floor, e^(3 - 2), is above the controller
        assert policy.model.formula(high) == pytest.approx(np.full(5, np.exp(3.0 - family.start["floor"])))
        after = high.copy()
        after[:, 0] = 0.6  # past the drop: no floor
        assert policy.model.formula(after) == pytest.approx(shipped.model.formula(after[:, :11]))
        no_floor = load_policy_of(family.expression({**family.start, "floor": 20.0}), "relative_peak")
        assert no_floor.model.formula(high) == pytest.approx(shipped.model.formula(high[:, :11]))
    elif name == "settle_ratchet":  # settle_floor while the LR is at its peak; below it, a falling loss raises it no more
        floor = evolve.FAMILIES["settle_floor"]
        free = load_policy_of(floor.expression(family.start), "relative_peak")
        obs[:, 0], obs[:, 10] = 0.3, 0.05  # before the drop at 0.45 of 20 epochs
        obs[:, 5], obs[:, 8] = -0.1, 0.0  # the loss fell 10 % to a new best: the controller would raise the LR
        obs[:, 11] = obs[:, 1]  # at its peak: free
        assert policy.model.formula(obs) == pytest.approx(free.model.formula(obs))
        assert (policy.model.formula(obs) > np.exp(obs[:, 1])).all()
        below = obs.copy()
        below[:, 11] = obs[:, 1] + 0.5  # it was cut from a peak e^0.5 higher: held where it is
        assert policy.model.formula(below) == pytest.approx(np.exp(obs[:, 1]))
        below[:, 11] = obs[:, 1] + 0.5 + 1.0  # ... unless the floor, e^-1.2 of that peak, is higher
        assert policy.model.formula(below) == pytest.approx(np.exp(obs[:, 1] + 1.5 - family.start["floor"]))
    elif name == "settle_latch":  # settle_floor whose held drop stays armed for a window after `at`, and fires once
        floored = parent_at_start(family, "settle_floor", "relative_peak")
        obs[:, 10], obs[:, 7], obs[:, 9] = 0.05, 1.0, 0.1  # 20 epochs, overfitting by the gap, two epochs past its best
        obs[:, 11] = obs[:, 1] + 1.0  # the LR is e^-1 of its peak: armed
        drop = family.start["drop"] * np.tanh(family.start["gapk"] * (1.0 - family.start["gap0"]))
        for progress, dropped in ((0.3, False), (0.5, False), (0.6, True), (0.7, False)):  # before at, at it (floor's own drop), in the window, past it
            obs[:, 0] = progress
            extra = np.exp(-drop) if dropped else 1.0
            assert policy.model.formula(obs) == pytest.approx(floored.model.formula(obs) * extra), progress
        obs[:, 0] = 0.6
        fired = obs.copy()
        fired[:, 11] = obs[:, 1] + 3.0  # e^-3 of its peak: it has dropped (e^-3.39) and is disarmed
        best = obs.copy()
        best[:, 9] = 0.0  # at its best: held back, as settle_floor's drop is
        for unarmed in (fired, best):
            assert policy.model.formula(unarmed) == pytest.approx(floored.model.formula(unarmed))
    elif name == "settle_band":  # settle_latch, whose drop also needs a gap under gap1
        latch = evolve.FAMILIES["settle_latch"]
        latched = parent_at_start(family, "settle_latch", "relative_peak")
        obs[:, 0], obs[:, 10], obs[:, 9] = 0.6, 0.05, 0.1  # in the drop's window, two epochs past its best
        obs[:, 11] = obs[:, 1] + 1.0  # armed
        obs[:, 7] = [0.0, 0.5, 1.0, 1.5, 3.0]  # the gap: none, overfitting some, ... having fit its training set
        start = load_policy_of(latch.expression(latch.start), "relative_peak").model.formula(obs)
        drop = family.start["drop"] * np.tanh(family.start["gapk"] * np.maximum(obs[:, 7] - family.start["gap0"], 0.0))
        under = 1 - np.tanh(family.start["gapk1"] * np.maximum(obs[:, 7] - family.start["gap1"], 0.0))
        assert policy.model.formula(obs) == pytest.approx(start * np.exp(drop * (1 - under)))
        assert under[:4] == pytest.approx(np.ones(4)) and under[4] < 0.01  # up to gap1 all of the drop, at a gap of 3 none
        assert latched.model.formula(obs) == pytest.approx(start)
    elif name == "settle_sign":  # settle_band, whose rise has its own sharpness
        banded = parent_at_start(family, "settle_band", "relative_peak")
        obs[:, 0], obs[:, 10] = 0.3, 0.05
        obs[:, 11] = obs[:, 1]  # at its peak: the floor does not bind
        obs[:, 8] = 0.0  # at its best: no cut
        obs[:, 5] = [0.0, -0.001, -0.005, -0.02, -0.2]  # the validation loss's last change
        assert policy.model.formula(obs) == pytest.approx(banded.model.formula(obs))  # rsharp 40: settle_band
        sign = load_policy_of(family.expression({**family.start, "rsharp": 1000.0}), "relative_peak").model.formula(obs)
        rise = family.start["rise"]
        extra = rise * (np.tanh(1000.0 * -obs[:, 5]) - np.tanh(family.start["sharp"] * -obs[:, 5]))
        assert sign == pytest.approx(banded.model.formula(obs) * np.exp(extra))
        assert extra[0] == 0.0 and extra[2] > 0.5 * rise  # a flat loss grows no more; a 0.5 % fall nearly all of the rise
    elif name == "settle_climb":  # settle_sign at its peak; below it, the rise has the cut's sharpness
        signed = parent_at_start(family, "settle_sign", "relative_peak")
        banded = parent_at_start(family, "settle_band", "relative_peak")
        obs[:, 0], obs[:, 10] = 0.3, 0.05
        obs[:, 8] = 0.0  # at its best: no cut
        obs[:, 5] = [0.0, -0.001, -0.005, -0.02, -0.2]
        obs[:, 11] = obs[:, 1]  # climbing: the LR is its peak
        assert policy.model.formula(obs) == pytest.approx(signed.model.formula(obs))
        below = obs.copy()
        below[:, 11] = obs[:, 1] + 0.5  # cut from a peak e^0.5 higher (the floor, e^-2 of it, does not bind)
        assert policy.model.formula(below) == pytest.approx(banded.model.formula(below))
        assert policy.model.formula(below)[2] < 0.7 * signed.model.formula(below)[2]  # a 0.5 % fall no longer raises it
        near = load_policy_of(family.expression({**family.start, "near": 1.0}), "relative_peak")
        assert near.model.formula(below) == pytest.approx(signed.model.formula(below))  # within e^-near of the peak: climbing
    elif name == "settle_fade":  # settle_sign whose rise fades once the loss falls by more than `big` in an epoch
        signed = parent_at_start(family, "settle_sign", "relative_peak")
        obs[:, 0], obs[:, 10] = 0.3, 0.05
        obs[:, 11] = obs[:, 1]  # at its peak: the floor does not bind
        obs[:, 8] = 0.0  # at its best: no cut
        obs[:, 5] = [-0.005, -0.2, -0.69, -1.0, -2.0]  # the validation loss's last change (log)
        assert policy.model.formula(obs) == pytest.approx(signed.model.formula(obs))  # fade 0: settle_sign
        faded = load_policy_of(family.expression({**family.start, "fade": 1.0}), "relative_peak").model.formula(obs)
        kept = 1 - np.tanh(10 * np.maximum(-obs[:, 5] - family.start["big"], 0.0))
        assert faded == pytest.approx(signed.model.formula(obs) * np.exp(family.start["rise"] * (kept - 1)))
        assert kept[:3] == pytest.approx(np.ones(3)) and kept[4] < 0.01  # falls under e^-0.7 keep the rise; a fall to e^-2 has none
    else:
        pytest.fail(f"no check for the family {name}")


def starts_at_the_shipped_settle(family, policy, obs):
    """Check that ``policy`` (``family`` at its start) is the shipped settle default over 20 epochs; return that default."""
    shipped = parent_at_start(family, "settle", "relative_budget")
    obs[:, 10] = 0.05  # 20 epochs
    assert policy.model.formula(obs) == pytest.approx(shipped.model.formula(obs))
    return shipped


def test_the_mixed_family_reacts_to_the_train_loss():
    family = evolve.FAMILIES["mixed"]
    policy = load_policy_of(family.expression({**family.start, "react_train": 0.5, "sharp_train": 10.0}))
    obs = np.zeros((2, 8))
    obs[:, 4] = [-0.1, 0.1]  # train loss fell, rose
    up, down = policy.model.formula(obs)
    assert up == pytest.approx(np.exp(0.5 * np.tanh(1.0))) and down == pytest.approx(np.exp(-0.5 * np.tanh(1.0)))


def load_policy_of(text, features="relative"):
    return formula_policy(text, features=features, relative_factor=30.0)


def parent_at_start(family, parent, features="relative"):
    """The family ``parent`` at ``family``'s start (the constants they share): what ``family`` reduces to where its addition is off."""
    other = evolve.FAMILIES[parent]
    return load_policy_of(other.expression({k: family.start[k] for k in other.bounds}), features)


def test_candidates_are_ranked_per_variant():
    scores = np.array([[1.0, 10.0], [2.0, 30.0], [3.0, 20.0]])
    np.testing.assert_allclose(evolve.centred_ranks(scores), [-0.5, 0.25, 0.25])


def test_search_writes_a_loadable_formula_reproducibly_and_ships_it(tmp_path, monkeypatch):
    out = tmp_path / "evolve"
    argv = ["--config", str(_config(tmp_path)), "--generations", "2", "--popsize", "4", "--seeds", "1", "--eval-every", "1", "--eval-seeds", "1"]
    monkeypatch.setattr(evolve, "DEFAULT_POLICY_DIR", tmp_path / "package")
    fit = evolve.main([*argv, "--workers", "0", "--out", str(out), "--ship"])
    again = evolve.main([*argv, "--workers", "0", "--out", str(tmp_path / "again")])
    assert again == {**fit, "wall_time_s": again["wall_time_s"]}  # the same seed: the same search
    shipped = load_policy(tmp_path / "package")
    assert shipped.name == "default" and shipped.model.formula == load_policy(out / "formula.json").model.formula
    policy = load_policy(out / "formula.json")
    assert policy.model.relative_factor == 30.0 and policy.tasks == ["Digits-MLP-v0"]
    assert fit["inner_epochs"] == 2 * (4 * 3 + 4 * 4) + 2 * (3 + 4)  # candidates, then one validation per generation
    rows = (out / "generations.csv").read_text().splitlines()
    assert len(rows) == 3 and "validation_return" in rows[0] and "nan" not in rows[1] + rows[2]  # validated every generation


def test_bad_settings_are_named(tmp_path):
    assert evolve.bounds(["sharp=0,4"], evolve.FAMILIES["bold"])["sharp"] == (0.0, 4.0)
    with pytest.raises(ValueError, match="--family 'bolder': choose one of bold, mixed"):
        evolve.parse_args(["--family", "bolder"])
    with pytest.raises(ValueError, match="need 0.8 <= LO < HI <= 1.0"):
        evolve.parse_args(["--family", "mixed", "--bound", "beta=0.5,1"])
    with pytest.raises(ValueError, match="unknown constant 'speedy'"):
        evolve.parse_args(["--bound", "speedy=0,1"])
    with pytest.raises(ValueError, match="need 0.0 <= LO < HI <= 20.0"):
        evolve.parse_args(["--bound", "sharp=0,40"])
    family = evolve.FAMILIES["mixed"]
    assert evolve.start_point(["beta=0.9"], family.bounds, family) == {**family.start, "beta": 0.9}
    with pytest.raises(ValueError, match=r"beta must lie in its box \[0.8, 1.0\]"):
        evolve.parse_args(["--family", "mixed", "--init", "beta=0.5"])
    with pytest.raises(ValueError, match="write NAME=VALUE"):
        evolve.parse_args(["--init", "beta"])
    with pytest.raises(ValueError, match="--popsize must be at least 4"):
        evolve.parse_args(["--popsize", "2"])
    empty = tmp_path / "empty.yaml"
    empty.write_text("env: {}\n")
    with pytest.raises(ValueError, match="names no populations"):
        evolve.read_distribution(str(empty))


def test_a_search_over_relative_best_features_gives_a_scheduler_that_reads_the_best_loss(tmp_path):
    import torch

    from lrenv import FormulaScheduler, load_scheduler

    argv = ["--config", str(_config(tmp_path)), "--family", "best", "--generations", "2", "--popsize", "4", "--seeds", "1", "--eval-every", "1"]
    fit = evolve.main([*argv, "--eval-seeds", "1", "--finalists", "2", "--final-seeds", "1", "--workers", "0", "--out", str(tmp_path / "evolve")])
    # both validated means were scored again, and the kept one is the better of the two there
    finals = fit["finalists"]
    assert sorted(f["generation"] for f in finals) == [0, 1] and fit["generation"] == max(finals, key=lambda f: f["final_return"])["generation"]
    policy = load_policy(tmp_path / "evolve" / "formula.json")
    assert policy.model.formula.features == "relative_best" and "valid_loss_above_best" in policy.model.formula.expression
    # in a plain loop the scheduler builds the same feature: the LR falls while the loss is above its best
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = FormulaScheduler(optimizer, "exp(-valid_loss_above_best)", features="relative_best", epochs=6)
    lrs = []
    for valid in (1.0, 0.8, 0.9, 1.0, 0.8):  # epoch 0, then a new best, two epochs above it, and back
        scheduler.step(train_loss=valid, valid_loss=valid)
        lrs.append(optimizer.param_groups[0]["lr"])
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.1 * 0.8 / 0.9, 0.1 * 0.8 / 1.0, 0.1], rtol=1e-5)
    assert np.isfinite(load_scheduler(optimizer, tmp_path / "evolve" / "formula.json", epochs=6).get_last_lr()).all()


def test_a_search_can_start_from_an_evolved_formula_which_then_competes_in_the_pick(tmp_path):
    argv = ["--config", str(_config(tmp_path)), "--family", "best", "--popsize", "4", "--seeds", "1", "--eval-every", "1", "--eval-seeds", "1"]
    argv += ["--workers", "0"]
    first = evolve.main([*argv, "--generations", "1", "--out", str(tmp_path / "first")])
    start = str(tmp_path / "first" / "formula.json")
    assert evolve.read_start(start, "best") == pytest.approx(first["constants"])
    fit = evolve.main([*argv, "--generations", "2", "--start", start, "--finalists", "2", "--final-seeds", "1", "--out", str(tmp_path / "second")])
    finals = {f["generation"]: f for f in fit["finalists"]}
    assert sorted(finals) == [-1, 0, 1] and finals[-1]["constants"] == pytest.approx(first["constants"]) and finals[-1]["validation_return"] is None
    assert fit["constants"] == max(finals.values(), key=lambda f: f["final_return"])["constants"]
    moved = evolve.main([*argv, "--generations", "1", "--init", "beta=0.9", "--finalists", "2", "--final-seeds", "1", "--out", str(tmp_path / "moved")])
    assert {f["generation"] for f in moved["finalists"]} == {-1, 0}  # a start moved by --init competes too
    assert next(f for f in moved["finalists"] if f["generation"] == -1)["constants"]["beta"] == 0.9
    with pytest.raises(ValueError, match="not evolved in the family 'bold'; pass --family best, the family it was evolved in"):
        evolve.parse_args(["--family", "bold", "--start", start])
    with pytest.raises(ValueError, match="--start 'nowhere.json'"):
        evolve.parse_args(["--family", "best", "--start", "nowhere.json"])


def test_seeds_at_the_base_lrs_are_run_and_counted(tmp_path):
    argv = ["--config", str(_config(tmp_path)), "--generations", "1", "--popsize", "4", "--seeds", "1", "--eval-seeds", "1", "--workers", "0"]
    fit = evolve.main([*argv, "--seeds-at-base", "2", "--out", str(tmp_path / "evolve")])
    assert fit["inner_epochs"] == (4 * 3 + 4 * 4) * (1 + 2) + (3 + 4)  # candidates on 1 set-off and 2 base seeds, then a validation
    with pytest.raises(ValueError, match="--seeds-at-base must be 0 or more"):
        evolve.parse_args(["--seeds-at-base", "-1"])


def test_rescore_scores_formulas_on_the_seeds_of_the_final_pick(tmp_path):
    argv = ["--config", str(_config(tmp_path)), "--family", "best", "--popsize", "4", "--seeds", "1", "--eval-every", "1", "--eval-seeds", "1"]
    argv += ["--final-seeds", "2", "--workers", "0"]
    fit = evolve.main([*argv, "--generations", "2", "--finalists", "2", "--out", str(tmp_path / "search")])
    kept = next(f for f in fit["finalists"] if f["generation"] == fit["generation"])
    out = evolve.main([*argv, "--rescore", str(tmp_path / "search" / "formula.json"), "default", "--out", str(tmp_path / "rescore")])
    searched, default = out["rescored"]
    # the same episodes as the pick: the kept formula scores exactly what it scored there
    assert (searched["return_base_lr"], searched["return_set_off"]) == pytest.approx((kept["final_return_base_lr"], kept["final_return_set_off"]))
    assert default["formula"] == "default" and default["relative_factor"] == load_policy("default").env_config.relative_factor
    assert np.isfinite([default["return_base_lr"], default["return_set_off"], default["base_1"], default["set_off_1"]]).all()
    assert (tmp_path / "rescore" / "rescore.csv").read_text().count("\n") == 3
    with pytest.raises(ValueError, match="--rescore 'nowhere.json'"):
        evolve.parse_args(["--rescore", "nowhere.json"])


def test_a_formula_beats_the_first_only_by_more_than_twice_the_standard_error_over_the_sets():
    args = evolve.parse_args(["--final-sets", "3", "--seed", "4"])
    first = {"formula": "default", "return_seed_4": 1.0, "return_seed_5": 1.2, "return_seed_6": 0.9}
    steady = {"formula": "steady", "return_seed_4": 1.010, "return_seed_5": 1.212, "return_seed_6": 0.911}  # +0.011 ± 0.0006
    noisy = {"formula": "noisy", "return_seed_4": 1.03, "return_seed_5": 1.19, "return_seed_6": 0.91}  # +0.010 ± 0.012
    evolve.against_first([first, steady, noisy], args)
    assert steady["diff_vs_first"] == pytest.approx(0.011) and steady["diff_se"] == pytest.approx(0.001 / np.sqrt(3))
    assert steady["beats_first"] and not noisy["beats_first"] and noisy["diff_vs_first"] > 0
    ahead, behind = {"formula": "ahead", "return_seed_4": 1.001}, {"formula": "behind", "return_seed_4": 0.999}
    evolve.against_first([{"formula": "default", "return_seed_4": 1.0}, ahead, behind], evolve.parse_args(["--seed", "4"]))  # a checking set
    assert ahead["beats_first"] and not behind["beats_first"] and ahead["diff_vs_first"] == pytest.approx(0.001)


def test_final_sets_average_the_pick_and_rescore_over_the_seeds_that_follow(tmp_path):
    argv = ["--config", str(_config(tmp_path)), "--family", "best", "--popsize", "4", "--seeds", "1", "--eval-every", "1", "--eval-seeds", "1"]
    argv += ["--final-seeds", "1", "--workers", "0"]
    # --generations 0 searches nothing: the start (here moved by --init) is scored on every set and kept
    kept = evolve.main([*argv, "--generations", "0", "--init", "beta=0.9", "--final-sets", "2", "--out", str(tmp_path / "start")])
    (start,) = kept["finalists"]
    assert kept["generation"] == -1 and kept["constants"]["beta"] == 0.9 and kept["final_sets"] == [0, 1]
    assert kept["inner_epochs"] == 2 * 2 * (3 + 4)  # 2 sets x (base LRs, set off) x one seed of each variant (3 and 4 epochs)
    by_set = []
    for seed in (0, 1):  # each set is exactly --rescore's single set of that seed, and the pick ranks by their mean
        one = evolve.main([*argv, "--seed", str(seed), "--rescore", str(tmp_path / "start" / "formula.json"), "--out", str(tmp_path / f"s{seed}")])
        by_set.append(one["rescored"][0]["return"])
    assert start["final_return_per_set"] == pytest.approx(by_set) and start["final_return"] == pytest.approx(np.mean(by_set))
    both = evolve.main([*argv, "--final-sets", "2", "--rescore", str(tmp_path / "start" / "formula.json"), "--out", str(tmp_path / "both")])
    row = both["rescored"][0]
    assert (row["return_seed_0"], row["return_seed_1"], row["return"]) == pytest.approx((*by_set, np.mean(by_set)))
    assert load_policy(tmp_path / "start" / "formula.json").model.formula.expression == evolve.FAMILIES["best"].expression(kept["constants"])
    # set against itself: no difference and no win; on one set nothing can win (no spread to judge by)
    start_file = str(tmp_path / "start" / "formula.json")
    twice = evolve.main([*argv, "--final-sets", "2", "--rescore", start_file, start_file, "--out", str(tmp_path / "self")])
    assert twice["rescored"][1]["diff_vs_first"] == 0 and not twice["rescored"][1]["beats_first"]
    assert "diff_se" in (tmp_path / "self" / "rescore.csv").read_text().splitlines()[0]
    with pytest.raises(ValueError, match="--final-sets must be at least 1"):
        evolve.parse_args(["--final-sets", "0"])
    with pytest.raises(ValueError, match="--generations must be 0 or more"):
        evolve.parse_args(["--generations", "-1"])
