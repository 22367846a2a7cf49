import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import lrenv
from lrenv import LREnv
from lrenv.tasks import BUILTIN_TASKS, WIDTH_VARIANTS


def _episode(env, actions, seed):
    obs, info = env.reset(seed=seed)
    trajectory = [(obs, 0.0, info["valid_loss"])]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(np.array([action], dtype=np.float32))
        trajectory.append((obs, reward, info["valid_loss"]))
        if terminated or truncated:
            break
    return trajectory


def test_builtin_tasks_are_registered():
    assert set(BUILTIN_TASKS) | set(WIDTH_VARIANTS) <= set(lrenv.list_tasks())


@pytest.mark.parametrize(("variant", "base", "widths"), [
    ("MNIST1D-MLP-narrow-v0", "MNIST1D-MLP-v0", [32, 32]),
    ("MNIST1D-MLP-wide-v0", "MNIST1D-MLP-v0", [256, 256]),
    ("Digits-MLP-wide-v0", "Digits-MLP-v0", [512]),
])  # fmt: skip
def test_width_variants_change_only_the_hidden_width(variant, base, widths):
    task, reference = lrenv.make_task(variant), lrenv.make_task(base)
    assert task.config == reference.config
    assert task.data() is reference.data()
    model = task.model(torch.Generator().manual_seed(0))
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears[:-1]] == widths
    assert (linears[0].in_features, linears[-1].out_features) == (reference.model(torch.Generator())[0].in_features, 10)
    env = LREnv(variant, device="cpu", task_config={"epochs": 2})
    env.reset(seed=0)
    _, reward, *_ = env.step(np.zeros(1, np.float32))
    assert np.isfinite(reward) and reward > 0


@pytest.mark.parametrize("task", BUILTIN_TASKS)
def test_checkers_pass_on_every_builtin_task(task):
    # short budgets keep the test fast; the checks exercise reset/step/seeding, not learning
    env = gym.make(lrenv.ENV_ID, task=task, device="cpu", task_config={"epochs": 3})
    gym_check_env(env.unwrapped)
    sb3_check_env(LREnv(task, device="cpu", task_config={"epochs": 3}), warn=True)


@pytest.mark.parametrize("task", ["Tiny", "NoisyQuadratic-v0"])
def test_same_seed_and_actions_give_identical_episodes(task, tiny_task):
    task = tiny_task if task == "Tiny" else task
    actions = [0.2, -0.5, 0.0, 0.1, -1.0]
    a = _episode(LREnv(task, device="cpu", task_config={"epochs": 5}), actions, seed=11)
    b = _episode(LREnv(task, device="cpu", task_config={"epochs": 5}), actions, seed=11)
    c = _episode(LREnv(task, device="cpu", task_config={"epochs": 5}), actions, seed=12)
    assert len(a) == len(b) == 6
    for (obs_a, r_a, _), (obs_b, r_b, _) in zip(a, b):
        np.testing.assert_array_equal(obs_a, obs_b)
        assert r_a == r_b
    assert a[-1][2] != c[-1][2]


def test_return_telescopes_to_log_loss_ratio(tiny_task):
    traj = _episode(LREnv(tiny_task, device="cpu"), [0.0] * 5, seed=0)
    total = sum(r for _, r, _ in traj)
    assert total == pytest.approx(np.log(traj[0][2] / traj[-1][2]), rel=1e-6)
    assert total > 0


def test_terminates_at_budget_and_refuses_steps_after(tiny_task):
    env = LREnv(tiny_task, device="cpu", task_config={"epochs": 2})
    env.reset(seed=0)
    assert env.step(np.zeros(1, np.float32))[2:4] == (False, False)
    _, _, terminated, truncated, info = env.step(np.zeros(1, np.float32))
    assert (terminated, truncated, info["epoch"]) == (True, False, 2)  # the budget is part of the MDP: nothing to bootstrap
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(1, np.float32))


@pytest.mark.parametrize("task", ["Tiny", "NoisyQuadratic-v0"])
def test_divergence_ends_episode_cleanly(task, tiny_task):
    env = LREnv(tiny_task if task == "Tiny" else task, device="cpu", divergence_penalty=3.0)
    obs, _ = env.reset(seed=0)
    rewards, terminated, truncated = [], False, False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(np.ones(1, np.float32))  # top of the LR range
        assert np.isfinite(obs).all() and env.observation_space.contains(obs)
        assert np.isfinite(reward)
        rewards.append(reward)
    assert terminated and not truncated and info["diverged"]
    assert sum(rewards) == pytest.approx(-3.0)


def test_info_carries_raw_numbers(tiny_task):
    env = LREnv(tiny_task, device="cpu")
    _, info = env.reset(seed=0)
    assert info["epoch"] == 0 and info["lr"] == tiny_task.config.default_lr
    _, _, _, _, info = env.step(np.array([-1.0], np.float32))
    assert info["lr"] == pytest.approx(tiny_task.config.lr_range[0])
    assert set(info) >= {"task", "epoch", "lr", "train_loss", "valid_loss", "valid_accuracy", "diverged"}
    assert info["task"] == "Tiny-v0"


def test_relative_action_mode(tiny_task):
    env = LREnv(tiny_task, device="cpu", action_mode="relative", relative_factor=4.0)
    env.reset(seed=0)
    lrs = [env.step(np.array([a], np.float32))[4]["lr"] for a in (1.0, 0.5, -1.0, 5.0)]
    assert lrs == pytest.approx([0.4, 0.8, 0.2, 0.8])  # 5.0 is clipped to 1


def test_minimal_features(tiny_task):
    env = LREnv(tiny_task, device="cpu", features="minimal")
    obs, start = env.reset(seed=0)
    assert env.observation_space.shape == (2,) and obs.tolist() == [0.0, 0.0]
    obs, _, _, _, info = env.step(np.zeros(1, np.float32))
    first = start["valid_loss"]
    assert obs[0] == pytest.approx(1 / 5) and obs[1] == pytest.approx(np.log(info["valid_loss"] / first), abs=1e-6)


def test_final_loss_reward_pays_at_the_end(tiny_task):
    traj = _episode(LREnv(tiny_task, device="cpu", reward="final_loss"), [0.0] * 5, seed=0)
    rewards = [r for _, r, _ in traj[1:]]
    assert rewards[:-1] == [0.0] * 4
    assert rewards[-1] == pytest.approx(np.log(traj[0][2] / traj[-1][2]), rel=1e-6)


def test_time_to_target_reward_ends_at_target(tiny_task):
    env = LREnv(tiny_task, device="cpu", reward="time_to_target", target_loss=0.5)
    env.reset(seed=0)
    steps, terminated, truncated = 0, False, False
    while not (terminated or truncated):
        _, reward, terminated, truncated, info = env.step(np.zeros(1, np.float32))
        steps += 1
        assert reward == -1.0
    assert terminated and info["valid_loss"] <= 0.5 and steps < 5


def test_task_list_samples_tasks_and_option_picks_one(tiny_task):
    other = type(tiny_task)(epochs=3)
    other.name = "Tiny-short-v0"
    env = LREnv([tiny_task, other], device="cpu")
    seen = {env.reset(seed=s)[1]["task"] for s in range(12)}
    assert seen == {"Tiny-v0", "Tiny-short-v0"}
    assert env.reset(seed=0, options={"task": "Tiny-short-v0"})[1]["task"] == "Tiny-short-v0"
    with pytest.raises(ValueError, match="not one of this env's tasks: Tiny-v0, Tiny-short-v0"):
        env.reset(options={"task": "Nope-v0"})


def test_bad_arguments_name_what_is_allowed(tiny_task):
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) learning_rate; allowed: task, seed, render_mode, config, features, .*, device"):
        LREnv(tiny_task, learning_rate=0.1)
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) bogus; allowed: task"):
        gym.make(lrenv.ENV_ID, task=tiny_task, bogus=1)
    with pytest.raises(ValueError, match="choose one of log_progress, final_loss, time_to_target"):
        LREnv(tiny_task, reward="accuracy")
    with pytest.raises(ValueError, match="choose one of absolute, relative, multiplier"):
        LREnv(tiny_task, action_mode="cyclic")
    with pytest.raises(ValueError, match="choose one of standard, relative, relative_best, relative_hyper, relative_budget, relative_peak, minimal"):
        LREnv(tiny_task, features="all")
    with pytest.raises(TypeError, match="allowed: epochs, batch_size"):
        LREnv(tiny_task, task_config={"epoch": 3})
    with pytest.raises(KeyError, match="registered tasks: .*MNIST1D-MLP-v0"):
        LREnv("MNIST-v9")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action_is_a_clear_error(tiny_task, bad):
    env = LREnv(tiny_task, device="cpu")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"not finite; actions must be finite numbers in \[-1, 1\]"):
        env.step(np.array([bad], np.float32))


def test_out_of_range_action_is_clipped(tiny_task):
    env = LREnv(tiny_task, device="cpu")
    env.reset(seed=0)
    assert env.step(np.array([7.0], np.float32))[4]["lr"] == pytest.approx(tiny_task.config.lr_range[1])


def test_render_modes(tiny_task):
    env = LREnv(tiny_task, device="cpu", render_mode="rgb_array")
    env.reset(seed=0)
    env.step(np.zeros(1, np.float32))
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8 and frame.std() > 0
    text = LREnv(tiny_task, device="cpu", render_mode="ansi")
    text.reset(seed=0)
    assert "valid_loss=" in text.render()


def stats(valid):
    """Epoch stats of runs with these validation losses (train losses 1)."""
    from lrenv.engine import EpochStats

    valid = np.array(valid, dtype=float)
    return EpochStats(train_loss=np.ones(len(valid)), train_loss_std=np.zeros(len(valid)), valid_loss=valid)


def test_relative_best_reads_the_validation_loss_against_its_best_so_far():
    from lrenv.env import Observer

    observer = Observer("relative_best", n=2)
    above, since = observer.names.index("valid_loss_above_best"), observer.names.index("epochs_since_best")
    assert observer.names[:8] == Observer("relative").names  # "relative", then two more
    obs = observer.reset([0, 1], stats([2.0, 2.0]), lr=np.full(2, 0.1), epochs=np.full(2, 4), lr_range=np.array([[1e-3, 1.0]] * 2))
    assert obs[:, above].tolist() == [0.0, 0.0]
    obs = observer.update(stats([1.5, 2.5]), np.full(2, 0.1))
    np.testing.assert_allclose(obs[:, above], [0.0, np.log(2.5 / 2.0)], rtol=1e-6)
    np.testing.assert_allclose(obs[:, since], [0.0, 0.25])  # epochs since the best / the budget of 4
    obs = observer.update(stats([1.8, np.nan]), np.full(2, 0.1))  # a non-finite loss is never the best
    np.testing.assert_allclose(obs[0, above], np.log(1.8 / 1.5), rtol=1e-6)
    np.testing.assert_allclose(obs[:, since], [0.25, 0.5])
    obs = observer.update(stats([1.2, 1.9]), np.full(2, 0.1))
    np.testing.assert_allclose(obs[:, above], [0.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(obs[:, since], [0.0, 0.0])
    obs = observer.reset([1], stats([3.0]), lr=np.full(1, 0.1), epochs=np.full(1, 4), lr_range=np.array([[1e-3, 1.0]]))
    assert obs[0, above] == 0.0 and obs[0, since] == 0.0 and observer.best_valid.tolist() == [1.2, 3.0]  # a new episode forgets the old best


def test_relative_hyper_reads_the_last_move_of_the_lr_and_the_loss_change_before_it():
    from lrenv.env import Observer

    observer = Observer("relative_hyper", n=2)
    move, before = observer.names.index("lr_change"), observer.names.index("valid_loss_change_before")
    assert observer.names[:10] == Observer("relative_best").names  # "relative_best", then two more
    obs = observer.reset([0, 1], stats([2.0, 2.0]), lr=np.full(2, 0.1), epochs=np.full(2, 4), lr_range=np.array([[1e-3, 1.0]] * 2))
    assert obs[:, move].tolist() == [0.0, 0.0] and obs[:, before].tolist() == [0.0, 0.0]
    obs = observer.update(stats([1.5, 2.5]), np.array([0.2, 0.05]))  # epoch 1 at 2x and 0.5x the base
    np.testing.assert_allclose(obs[:, move], np.log([2.0, 0.5]), rtol=1e-6)
    assert obs[:, before].tolist() == [0.0, 0.0]
    obs = observer.update(stats([1.2, np.nan]), np.array([0.2, 0.5]))
    np.testing.assert_allclose(obs[:, move], [0.0, np.log(10.0)], atol=1e-6)
    np.testing.assert_allclose(obs[:, before], np.log([1.5 / 2.0, 2.5 / 2.0]), rtol=1e-6)  # epoch 1's changes
    obs = observer.update(stats([1.1, 2.0]), np.array([0.1, 0.5]))
    np.testing.assert_allclose(obs[0, before], np.log(1.2 / 1.5), rtol=1e-6)
    assert np.isfinite(obs).all()  # the diverged run's changes are clipped to bounds, not NaN
    obs = observer.reset([0], stats([3.0]), lr=np.full(1, 0.1), epochs=np.full(1, 4), lr_range=np.array([[1e-3, 1.0]]))
    assert obs[0, move] == 0.0 and obs[0, before] == 0.0  # a new episode forgets the old moves
    obs = observer.update(stats([2.0, 1.9]), np.array([0.1, 0.5]))
    assert obs[0, before] == 0.0 and obs[0, move] == 0.0


def test_relative_budget_reads_one_epoch_of_the_budget():
    from lrenv.env import Observer

    observer = Observer("relative_budget", n=2)
    assert observer.names[:10] == Observer("relative_best").names and observer.names[10] == "epoch_fraction"
    obs = observer.reset([0, 1], stats([2.0, 2.0]), lr=np.full(2, 0.1), epochs=np.array([4, 50]), lr_range=np.array([[1e-3, 1.0]] * 2))
    np.testing.assert_allclose(obs[:, 10], [0.25, 0.02])
    obs = observer.update(stats([1.5, np.nan]), np.full(2, 0.1))
    np.testing.assert_allclose(obs[:, 10], [0.25, 0.02])
    np.testing.assert_allclose(obs[:, 0] - obs[:, 10], [0.0, 0.0], atol=1e-7)  # progress one epoch earlier


def test_relative_peak_reads_the_highest_lr_a_run_has_trained_at():
    from lrenv.env import Observer

    observer = Observer("relative_peak", n=2)
    assert observer.names[:11] == Observer("relative_budget").names and observer.names[11] == "lr_ratio_peak"
    obs = observer.reset([0, 1], stats([2.0, 2.0]), lr=np.array([0.1, 1.0]), epochs=np.full(2, 4), lr_range=np.array([[1e-3, 10.0]] * 2))
    assert obs[:, 11].tolist() == [0.0, 0.0]  # nothing trained yet: the base
    obs = observer.update(stats([1.5, 1.8]), np.array([0.3, 0.5]))
    np.testing.assert_allclose(obs[:, 11], np.log([3.0, 0.5]), rtol=1e-6)  # a first epoch below the base is the peak
    obs = observer.update(stats([1.4, np.nan]), np.array([0.05, 0.7]))
    np.testing.assert_allclose(obs[:, 11], np.log([3.0, 0.7]), rtol=1e-6)  # held after a cut, raised by a higher LR
    obs = observer.reset([0], stats([3.0]), lr=np.full(1, 0.2), epochs=np.full(1, 4), lr_range=np.array([[1e-3, 10.0]]))
    assert obs[0, 11] == 0.0  # a new episode forgets the old peak
    obs = observer.update(stats([2.0, 1.9]), np.array([0.1, 0.7]))
    np.testing.assert_allclose(obs[:, 11], np.log([0.5, 0.7]), rtol=1e-6)
