"""The training distribution: MixtureVecEnv, PairedSeeds, multiplier actions, relative features, base-LR spread, ARS."""

import json

import numpy as np
import pytest
from conftest import TinyClassifier
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.vec_env import VecMonitor

from lrenv import BatchedVecEnv, LREnv
from lrenv.agents.ars import ARS
from lrenv.env.mixture import MixtureVecEnv, NewDrawEachRollout, PairedSeeds
from lrenv.policy import load_policy

SETTINGS = {"device": "cpu", "features": "relative", "action_mode": "multiplier", "relative_factor": 100.0}


def tiny(name="Tiny-v0", **overrides):
    task = TinyClassifier(**overrides)
    task.name = name
    return task


def parts(seed=None):
    return [BatchedVecEnv(tiny(), 2, **SETTINGS), BatchedVecEnv(tiny("Tiny-long-v0", epochs=8, optimizer="adam", default_lr=1e-2), 3, **SETTINGS)]


def test_mixture_gives_the_numbers_of_its_parts_side_by_side():
    mixture = MixtureVecEnv(parts())
    mixture.seed(7)
    alone = parts()
    alone[0].seed(7)
    alone[1].seed(9)  # env k of the mixture has seed 7 + k: the second part starts at env 2
    np.testing.assert_array_equal(mixture.reset(), np.concatenate([p.reset() for p in alone]))
    rng = np.random.default_rng(0)
    for _ in range(12):  # past both budgets: the parts restart on their own
        actions = rng.uniform(-0.5, 0.5, size=(5, 1)).astype(np.float32)
        obs, rewards, dones, infos = mixture.step(actions)
        expected = [alone[0].step(actions[:2]), alone[1].step(actions[2:])]
        np.testing.assert_array_equal(obs, np.concatenate([e[0] for e in expected]))
        np.testing.assert_array_equal(rewards, np.concatenate([e[1] for e in expected]))
        np.testing.assert_array_equal(dones, np.concatenate([e[2] for e in expected]))
        assert [i["task"] for i in infos] == ["Tiny-v0"] * 2 + ["Tiny-long-v0"] * 3
    assert mixture.get_attr("num_envs", [0, 4]) == [2, 3]
    assert mixture.env_is_wrapped(VecMonitor) == [False] * 5
    with pytest.raises(IndexError, match="out of range"):
        mixture.get_attr("num_envs", [5])


def test_mixture_rejects_parts_that_observe_differently():
    with pytest.raises(ValueError, match="share their spaces"):
        MixtureVecEnv([BatchedVecEnv(tiny(), 1, device="cpu"), BatchedVecEnv(tiny(), 1, device="cpu", features="minimal")])


def test_paired_seeds_repeat_episodes_until_the_next_draw():
    paired = PairedSeeds(MixtureVecEnv(parts()), seed=3)
    first = paired.reset()
    paired.step(np.zeros((5, 1)))
    np.testing.assert_array_equal(paired.reset(), first)
    infos_a = paired.step(np.full((5, 1), 0.3))[3]
    paired.reset()
    infos_b = paired.step(np.full((5, 1), 0.3))[3]
    assert [i["valid_loss"] for i in infos_a] == [i["valid_loss"] for i in infos_b]
    paired.next_draw()
    paired.reset()
    infos_c = paired.step(np.full((5, 1), 0.3))[3]
    assert [i["run_seed"] for i in infos_c] != [i["run_seed"] for i in infos_a]


def test_multiplier_mode_scales_the_base_lr_and_relative_features_hide_the_scale():
    lrs, observations = {}, {}
    for base in (0.01, 1.0):
        env = LREnv(tiny(default_lr=base, lr_range=(1e-5, 100.0)), seed=0, **SETTINGS)
        obs, _ = env.reset()
        assert obs[1] == 0.0  # lr_ratio at epoch 0: the LR is the base
        _, _, _, _, info = env.step(np.array([0.5]))
        lrs[base], observations[base] = info["lr"], obs
    assert lrs[0.01] == pytest.approx(0.01 * 10.0) and lrs[1.0] == pytest.approx(10.0)
    np.testing.assert_allclose(observations[0.01], observations[1.0])  # same untrained model: same observation


def test_base_lr_spread_draws_the_base_from_the_run_seed_alike_in_env_and_vec_env():
    task = tiny(lr_range=(1e-4, 10.0))
    env = LREnv(task, seed=4, base_lr_spread=10.0, **SETTINGS)
    bases = []
    for _ in range(6):
        env.reset()
        _, _, _, _, info = env.step(np.array([0.0]))  # a = 0: the LR is the base
        bases.append(info["lr"])
    assert all(0.01 - 1e-12 <= b <= 1.0 + 1e-12 for b in bases) and len(set(bases)) == 6
    vec = BatchedVecEnv(task, 2, seed=4, base_lr_spread=10.0, **SETTINGS)
    vec.reset()
    infos = vec.step(np.zeros((2, 1)))[3]
    again = LREnv(task, seed=4, base_lr_spread=10.0, **SETTINGS)
    again.reset()
    assert again.step(np.array([0.0]))[4]["lr"] == infos[0]["lr"]
    with pytest.raises(ValueError, match="base_lr_spread must be a finite number >= 1"):
        LREnv(task, base_lr_spread=0.5)


def test_relative_features_and_multiplier_actions_pass_sb3_check_env():
    check_env(LREnv(tiny(), **SETTINGS))


def test_ars_learns_on_paired_seeds_and_saves_a_policy_that_loads_without_pickles(tmp_path):
    from lrenv.run_dir import RunDir

    venv = PairedSeeds(MixtureVecEnv(parts()), seed=0)
    model = ARS("LinearPolicy", VecMonitor(venv), n_delta=2, n_top=2, n_eval_episodes=5, policy_kwargs={"with_bias": True}, seed=0)
    model.learn(total_timesteps=200, callback=NewDrawEachRollout(venv))
    # one vector step counts its 5 inner epochs once; 4 candidates of one 8-epoch episode per env per iteration
    assert model.num_timesteps % 5 == 0 and model.num_timesteps >= 200
    assert venv.draw >= 2  # each iteration drew new episodes
    RunDir._save_policy(model, None, tmp_path)
    task_configs = {"Tiny-v0": {"epochs": 5, "lr_range": [1e-3, 30.0]}}
    (tmp_path / "config.json").write_text(json.dumps({"algo": "ars", "tasks": ["Tiny-v0"], "task_configs": task_configs, "env": SETTINGS, "seed": 0}))
    spec = json.loads((tmp_path / "policy.json").read_text())
    assert spec["policy_class"] == "ARSLinearPolicy" and spec["kwargs"] == {"with_bias": True, "squash_output": False}
    policy = load_policy(tmp_path)
    obs = np.random.default_rng(0).uniform(-1, 1, size=(3, 8)).astype(np.float32)
    np.testing.assert_allclose(policy.predict(obs), model.predict(obs, deterministic=True)[0], atol=1e-6)


def test_cosine_base_shape_makes_action_zero_cosine_decay_from_the_base_lr():
    task = tiny(epochs=4, default_lr=0.2, lr_range=(1e-4, 10.0))
    env = LREnv(task, seed=1, base_shape="cosine", **SETTINGS)
    env.reset()
    lrs = [env.step(np.array([0.0]))[4]["lr"] for _ in range(4)]
    np.testing.assert_allclose(lrs, 0.2 * 0.5 * (1 + np.cos(np.pi * np.arange(4) / 4)))
    env.reset()
    assert env.step(np.array([1.0]))[4]["lr"] == 10.0  # base * f = 20 is past the task's range: clipped to its top
    env.reset()
    env.step(np.array([0.0]))
    env.step(np.array([0.0]))
    assert env.step(np.array([-1.0]))[4]["lr"] == pytest.approx(0.2 / 100.0)  # clipped at base / f, not below


def test_centred_ranks_weigh_every_env_alike():
    from lrenv.agents.ars import centred_ranks

    returns = np.array([[5.0, 0.1, -2.0], [1.0, 0.2, 3.0], [1.0, 0.3, 3.5]])  # env 0: a large scale; env 2: a divergence
    ranks = centred_ranks(returns)
    np.testing.assert_allclose(ranks[:, 0], [0.5, -0.25, -0.25])  # tied candidates share their rank
    np.testing.assert_allclose(ranks[:, 1], [-0.5, 0.0, 0.5])
    np.testing.assert_allclose(ranks.sum(1), [-0.5, -0.25, 0.75])


def test_ars_with_per_env_ranks_counts_one_episode_per_env():
    venv = PairedSeeds(MixtureVecEnv(parts()), seed=0)
    model = ARS("LinearPolicy", VecMonitor(venv), n_delta=2, n_top=2, rank_per_env=True, policy_kwargs={"with_bias": True}, seed=0)
    model.learn(total_timesteps=120)
    # an iteration: 4 candidates, each until both parts ended one episode: 8 vector steps of 5 envs
    assert model.num_timesteps == 160 and model.rank_per_env
