import numpy as np
import pytest
from conftest import TinyClassifier
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor, VecNormalize

from lrenv import BatchedVecEnv, LREnv


@pytest.fixture
def task():
    task = TinyClassifier()
    task.name = "Tiny-v0"
    return task


def test_same_numbers_as_separate_envs_including_lone_resets(task):
    n = 4
    batched = BatchedVecEnv(task, n, device="cpu", seed=5)
    separate = DummyVecEnv([lambda: LREnv(task, device="cpu") for _ in range(n)])
    separate.seed(5)
    np.testing.assert_allclose(batched.reset(), separate.reset(), atol=1e-5)
    rng = np.random.default_rng(0)
    resets = 0
    for t in range(12):
        actions = rng.uniform(-1, 0.2, size=(n, 1)).astype(np.float32)
        if t == 2:
            actions[1] = 1.0  # top of the LR range: run 1 diverges while the others go on
        obs_b, rew_b, done_b, info_b = batched.step(actions)
        obs_s, rew_s, done_s, info_s = separate.step(actions)
        np.testing.assert_array_equal(done_b, done_s)
        np.testing.assert_allclose(obs_b, obs_s, atol=1e-5)
        np.testing.assert_allclose(rew_b, rew_s, atol=1e-5)
        for b, s in zip(info_b, info_s):
            assert set(b) == set(s)
            assert b["epoch"] == s["epoch"] and b["diverged"] == s["diverged"]
            assert b["TimeLimit.truncated"] == s["TimeLimit.truncated"]
            if "terminal_observation" in s:
                np.testing.assert_allclose(b["terminal_observation"], s["terminal_observation"], atol=1e-5)
        if t == 2:
            assert done_b.tolist() == [False, True, False, False] and info_b[1]["diverged"]
            assert not info_b[1]["TimeLimit.truncated"]
        resets += done_b.sum()
    assert resets >= 5  # budget ends (5 epochs) and the divergence all restarted


def test_ppo_and_sac_train_with_vecnormalize_and_vecmonitor(task):
    for algo, kwargs in ((PPO, {"n_steps": 16, "batch_size": 32, "n_epochs": 2}), (SAC, {"learning_starts": 16, "batch_size": 32})):
        venv = VecNormalize(VecMonitor(BatchedVecEnv(task, 4, device="cpu", seed=0)), norm_reward=False)
        model = algo("MlpPolicy", venv, seed=0, device="cpu", **kwargs)
        model.learn(total_timesteps=96)
        assert model.num_timesteps >= 96
        assert venv.obs_rms.count > 1  # VecNormalize saw the observations
        monitor = venv.venv
        assert len(monitor.episode_returns) + np.sum(monitor.episode_lengths) > 0
        mean, std = evaluate_policy(model, venv, n_eval_episodes=4, warn=False)
        assert np.isfinite(mean) and np.isfinite(std)


def test_evaluate_policy_counts_whole_episodes(task):
    class Constant:
        def predict(self, obs, state=None, episode_start=None, deterministic=True):
            return np.zeros((len(obs), 1), np.float32), None

    venv = VecMonitor(BatchedVecEnv(task, 2, device="cpu", seed=1))
    rewards, lengths = evaluate_policy(
        Constant(),
        venv,
        n_eval_episodes=4,
        return_episode_rewards=True,
    )
    assert lengths == [5, 5, 5, 5] and all(r > 0 for r in rewards)


def test_bad_arguments(task):
    with pytest.raises(TypeError, match="one task per population"):
        BatchedVecEnv([task, task], 2)
    with pytest.raises(ValueError, match="n_envs must be a positive integer"):
        BatchedVecEnv(task, 0)
    with pytest.raises(ValueError, match="choose one of log_progress"):
        BatchedVecEnv(task, 2, reward="nope")
    venv = BatchedVecEnv(task, 2, device="cpu", seed=0)
    venv.reset()
    with pytest.raises(ValueError, match="not finite"):
        venv.step(np.array([[0.0], [np.nan]], np.float32))
