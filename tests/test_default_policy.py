"""The policies shipped inside the package: the default Ψ (a formula meta-learned by agents.evolve) and the
RL policy "ars"; they load from plain data, scale with the user's LR, evaluate, ship."""

import csv
import json

import numpy as np
import pytest
import torch
from conftest import TinyClassifier

import lrenv
from lrenv.agents import ship_default, train
from lrenv.agents.config import CONFIG_DIR
from lrenv.policy import ARS_POLICY_DIR, DEFAULT_POLICY_DIR

# a fixed loss history: the observations, and so the policy's factors, are the same for every base LR
LOSSES = [(2.3, 2.31), (1.2, 1.3), (0.8, 0.95), (0.6, 0.85), (0.5, 0.84), (0.42, 0.86), (0.38, 0.9), (0.35, 0.93)]


def test_the_default_policy_is_small_plain_data_and_loads_by_name():
    assert [p.name for p in DEFAULT_POLICY_DIR.iterdir()] == ["formula.json"]
    policy = lrenv.load_policy("default")
    assert policy.name == "default" and policy.config["algo"] == "formula"
    # nothing it reads depends on the LR's absolute scale
    assert policy.env_config.action_mode == "multiplier" and policy.env_config.features in ("relative", "relative_best", "relative_budget", "relative_peak")
    assert (DEFAULT_POLICY_DIR / "formula.json").stat().st_size <= 1_000_000
    # a floored controller, a cosine and one gated, armed drop: one line each (91 operations)
    assert policy.model.formula.operations <= 100 and "agents.evolve" in policy.config["source"]
    fit = json.loads((DEFAULT_POLICY_DIR / "formula.json").read_text())["fit"]
    assert fit["inner_epochs"] <= 200_000 and fit["wall_time_s"] <= 3600  # the meta-training budget


def test_the_default_policys_recorded_command_is_a_valid_search_that_reproduces_its_family(monkeypatch):
    import shlex

    from lrenv.agents import evolve

    saved = json.loads((DEFAULT_POLICY_DIR / "formula.json").read_text())
    words = shlex.split(saved["source"])
    assert words[:3] == ["python", "-m", "agents.evolve"] and "--ship" in words
    monkeypatch.chdir(CONFIG_DIR.parent.parent)  # the command runs from the repository root, where its --config lies
    args = evolve.parse_args(words[3:])
    family = evolve.FAMILIES[args.family]
    assert saved["domain"]["family"] == family.template and set(saved["fit"]["constants"]) == set(family.bounds)
    variants, _ = evolve.read_distribution(args.config)
    assert [{"task": t, "task_config": o} for t, o in variants] == saved["domain"]["variants"]


def test_the_shipped_rl_policy_is_small_plain_data_and_loads_by_name():
    files = sorted(p.name for p in ARS_POLICY_DIR.iterdir())
    assert files == sorted(["config.json", "policy.json", "policy.safetensors"] + (["normalization.json"] if "normalization.json" in files else []))
    assert sum(p.stat().st_size for p in ARS_POLICY_DIR.iterdir()) <= 1_000_000
    policy = lrenv.load_policy("ars")
    assert policy.name == "ars" and policy.config["algo"] == "ars"
    assert policy.env_config.action_mode == "multiplier" and policy.env_config.features == "relative"
    assert policy.env_config.base_lr_spread == 1.0  # used from the task's default LR; trained on mis-set ones
    assert json.loads((ARS_POLICY_DIR / "config.json").read_text())["env"]["base_lr_spread"] > 1


def lrs_for(base_lr: float, optimizer_cls=torch.optim.SGD, name: str = "default") -> list[float]:
    model = torch.nn.Linear(2, 2)
    optimizer = optimizer_cls(model.parameters(), lr=base_lr)
    scheduler = lrenv.load_scheduler(optimizer, name, epochs=len(LOSSES) - 1)
    lrs = []
    for train_loss, valid_loss in LOSSES:
        scheduler.step(train_loss=train_loss, valid_loss=valid_loss, train_loss_std=0.1 * train_loss)
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("name", ["default", "ars", "formula"])
def test_the_shipped_schedulers_take_the_scale_from_the_optimizer_and_the_shape_from_the_policy(name):
    small, large = np.array(lrs_for(1e-3, name=name)), np.array(lrs_for(0.1, torch.optim.Adam, name=name))
    np.testing.assert_allclose(large, 100 * small, rtol=1e-9)  # 100x the base LR: 100x every LR
    assert len(set(np.round(small / 1e-3, 9))) > 3  # a schedule, not a constant factor
    f = lrenv.load_policy(name).env_config.relative_factor  # the policy's own box around the base LR
    assert np.all(small >= 1e-3 / f * (1 - 1e-12)) and np.all(small <= 1e-3 * f * (1 + 1e-12))


def test_the_default_policy_in_the_evaluation_harness(tmp_path):
    from lrenv.agents import evaluate

    evaluate.main(["--tasks", "Digits-MLP-v0", "--runs", "default", "--quick", "--out", str(tmp_path), "--workers", "0", "--no-cache"])
    with (tmp_path / "summary.csv").open() as f:
        rows = [row for row in csv.DictReader(f) if row["method"] == "default"]
    assert len(rows) == 1 and rows[0]["task"] == "Digits-MLP-v0" and float(rows[0]["valid_loss_mean"]) > 0 and rows[0]["kind"] == "learned"


def test_ship_copies_a_trained_run_into_a_loadable_policy_folder(tmp_path, monkeypatch):
    task = "ShipTiny-v0"
    lrenv.register_task(task, TinyClassifier)
    try:
        run_dir = train.main(
            ["--config", str(CONFIG_DIR / "default.yaml"), "--timesteps", "60", "--eval-episodes", "0", "--runs-dir", str(tmp_path / "runs"),
             "--no-progress-bar", "--set", "eval_freq=30", "hyperparams.n_delta=1", "hyperparams.n_top=1", "hyperparams.n_eval_episodes=2",
             f"populations=[{{task: {task}, n_envs: 2}}]"]
        )
        written = ship_default.ship(run_dir, tmp_path / "shipped")
        assert {p.name for p in written} == {"policy.json", "policy.safetensors", "normalization.json", "config.json"}
        shipped = lrenv.load_policy(tmp_path / "shipped")
        assert shipped.name == "ars" and "run_dir" not in shipped.config
        obs = np.random.default_rng(0).uniform(-1, 1, size=(4, 8)).astype(np.float32)
        np.testing.assert_array_equal(shipped.predict(obs), lrenv.load_policy(run_dir).predict(obs))
        monkeypatch.setattr(ship_default, "MAX_BYTES", 100)
        with pytest.raises(ValueError, match="must stay under 100"):
            ship_default.ship(run_dir, tmp_path / "too_big")
    finally:
        lrenv.unregister_task(task)


@pytest.mark.parametrize("name", ["default", "ars"])
def test_the_harness_plays_the_shipped_policies_as_lrenv_does(name):
    """Every setting a policy acts through (the RL policy's cosine base shape included) reaches the comparison's episodes."""
    from lrenv.evaluation import compare, load_run

    policy = lrenv.load_policy(name)
    results = compare(["Digits-MLP-v0"], baselines=["constant"], contenders=[load_run(name)], eval_seeds=2, tune_seeds=1, trials=2,
                      task_config={"epochs": 4}, workers=0)
    episodes = [e for e in results.episodes if e.method == name]
    env = lrenv.LREnv("Digits-MLP-v0", config=policy.env_config.replace(task_config={"epochs": 4}, device="cpu"))
    for episode in episodes:
        obs, _ = env.reset(seed=episode.seed)  # the harness's seeds are LREnv reset seeds
        lrs = []
        for _ in range(4):
            obs, _, _, _, info = env.step(policy.predict(obs[None])[0])
            lrs.append(info["lr"])
        # the default reacts sharply to the last loss change, so float rounding of a population moves it a little more
        np.testing.assert_allclose(episode.lrs, lrs, rtol=1e-6 if name == "ars" else 1e-4)
    assert len(episodes) == 2


def shipped_constants() -> dict[str, float]:
    """The constants the default's search kept (its family's template is in the record too)."""
    return json.loads((DEFAULT_POLICY_DIR / "formula.json").read_text())["fit"]["constants"]


def test_the_default_settles_by_its_clock_and_keeps_shrinking_past_the_budget():
    """After settle·T the losses no longer move the default: its LR only falls, to base/300 at most."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = lrenv.load_scheduler(optimizer, "default", epochs=10)
    rng = np.random.default_rng(0)
    for _ in range(40):  # 30 epochs past the budget, the losses jumping about
        scheduler.step(train_loss=float(rng.uniform(0.5, 2)), valid_loss=float(rng.uniform(0.5, 2)))
    first = int(np.floor(shipped_constants()["settle"] * 10)) + 1  # the LRs chosen after the first epoch i with i/T > settle, and on
    assert 5 < first < 10
    settled = np.array(scheduler.lrs[first:])
    assert np.all(np.diff(settled) <= 0) and settled[0] < scheduler.lrs[first - 1]
    assert settled[-1] == pytest.approx(0.1 / lrenv.load_policy("default").env_config.relative_factor)


def test_the_default_asks_for_the_epoch_budget_it_anneals_over():
    import warnings

    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="no epochs= given: the policy 'default' has no single training budget"):
        assert lrenv.load_scheduler(optimizer, "default").epochs == 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lrenv.load_scheduler(optimizer, "default", epochs=30).epochs == 30


def test_the_default_drops_once_near_half_its_budget_as_far_as_the_run_overfits_and_stalls():
    """Past at·T the default's LR falls once by up to e^-drop: when log(L_valid / L_train) is over gap0 and L_valid is not at its best."""
    c = shipped_constants()
    assert 0.3 < c["at"] < 0.6 and c["drop"] >= 2.3  # about half the budget, 10x or more

    def lrs(gap: float, falling: float = 0.0) -> np.ndarray:  # L_valid = e^gap · L_train: only the gap differs between runs
        optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        scheduler = lrenv.load_scheduler(optimizer, "default", epochs=10)
        for i in range(8):
            valid = 0.5 * np.exp(-falling * i)  # a flat loss stays above its first epoch's; a falling one is a new best each epoch
            scheduler.step(train_loss=valid * np.exp(-gap), valid_loss=valid)
        return np.array(scheduler.lrs)

    together = lrs(0.0)
    assert lrs(c["gap0"] - 0.05) == pytest.approx(together)  # a gap under gap0: no drop
    overfit = lrs(1.0) / together
    drop = int(np.argmax(overfit < 0.99))
    assert drop == int(np.floor(c["at"] * 10)) + 1 and overfit[:drop] == pytest.approx(np.ones(drop))  # the first epoch whose i/T passes at
    assert overfit[drop] == pytest.approx(np.exp(-c["drop"] * np.tanh(c["gapk"] * (1.0 - c["gap0"]))), rel=1e-3)  # all of the drop, or nearly
    assert overfit[drop + 1] == pytest.approx(overfit[drop] ** c["beta"])  # once: the controller's memory then carries it
    assert overfit[drop] < lrs(c["gap0"] + 0.05)[drop] / together[drop] < 1  # a gap just over gap0 drops less
    assert lrs(1.0, falling=0.01) == pytest.approx(lrs(0.0, falling=0.01))  # still improving: no drop, however large the gap


def test_the_default_keeps_its_lr_within_e_floor_of_the_highest_it_trained_at_until_the_drop():
    """Before at·T a loss that keeps rising cuts the LR only down to e^-floor of the run's highest LR; from at·T on, further."""
    c = shipped_constants()
    assert 1.0 <= c["floor"] <= 3.0
    valid = [2.0, 1.0, 0.6, 0.4] + [0.4 * 1.05**k for k in range(1, 17)]  # falls fast, then rises 5 % every epoch

    def run(losses, state=None):
        scheduler = lrenv.load_scheduler(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1), "default", epochs=20)
        if state is not None:
            scheduler.load_state_dict(state)
        for loss in losses:
            scheduler.step(train_loss=loss, valid_loss=loss)  # no gap: the drop never fires
        return scheduler

    scheduler = run(valid)
    lrs = np.array(scheduler.lrs)
    before = [i for i in range(1, 20) if i / 20 <= c["at"]]
    floors = np.array([lrs[:i].max() * np.exp(-c["floor"]) for i in before])  # lrs[:i]: the LRs epochs 1..i trained at
    assert np.all(lrs[before] >= floors * (1 - 1e-9))
    assert np.isclose(lrs[before], floors, rtol=1e-6).sum() >= 2  # the rising loss cuts it down to the floor, which holds it
    after = lrs[before[-1] + 1 : int(c["settle"] * 20)]
    assert after.min() < lrs[before[-1]] * np.exp(-0.5)  # past at·T the cuts go on below it
    # a run resumed on the floor remembers the highest LR: it goes on exactly as the uninterrupted one
    state = run(valid[:6]).state_dict()
    assert run(valid[6:], state).lrs == scheduler.lrs
    forgetful = {**state, "observer": {k: v for k, v in state["observer"].items() if k != "peak_lr"}}
    with pytest.warns(UserWarning, match="the highest LR so far restarts"):
        assert run(valid[6:], forgetful).lrs != scheduler.lrs  # without it the floor restarts lower
