"""Baseline schedules: each one, driven through LREnv, sets the LR its torch scheduler sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TinyClassifier

import lrenv
from lrenv import schedules
from lrenv.baselines import BASELINES, make_policy
from lrenv.evaluation import env_run_seed
from lrenv.evaluation.tuning import lr_grid, tuning_grid

T = 12
LR_RANGE = (1e-3, 30.0)


def tiny(epochs: int = T, **overrides) -> TinyClassifier:
    task = TinyClassifier(epochs=epochs, **overrides)
    task.name = "Tiny-v0"
    return task


def env_lrs(policy, task=None, seed: int = 0, features: str = "standard") -> tuple[list[float], list[dict]]:
    """The LR the env trains each epoch at under ``policy``, and the infos of every step."""
    env = lrenv.LREnv(task or tiny(), device="cpu", features=features)
    obs, info = env.reset(seed=seed)
    state, start, done, lrs, infos = None, np.array([True]), False, [], [info]
    while not done:
        action, state = policy.predict(obs[None], state=state, episode_start=start)
        obs, _, terminated, truncated, info = env.step(action[0])
        start = np.array([False])
        lrs.append(info["lr"])
        infos.append(info)
        done = terminated or truncated
    return lrs, infos


def torch_lrs(make_scheduler, base_lr: float, epochs: int = T) -> list[float]:
    """The LR of each epoch under a torch scheduler stepped once per epoch (after training it)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = make_scheduler(optimizer)
    out = []
    for _ in range(epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def assert_same(env: list[float], reference: list[float]) -> None:
    expected = np.clip(reference, *LR_RANGE)
    np.testing.assert_allclose(env, expected, rtol=2e-6)


S = torch.optim.lr_scheduler
CASES = {
    "constant": ({"lr": 0.2}, lambda o: S.ConstantLR(o, factor=1.0, total_iters=T)),
    "step": ({"lr": 0.5, "gamma": 0.3}, lambda o: S.MultiStepLR(o, milestones=[6, 9], gamma=0.3)),
    "exponential": ({"lr": 0.5, "decay": 0.01}, lambda o: S.ExponentialLR(o, gamma=0.01 ** (1 / T))),
    "cosine": ({"lr": 0.5}, lambda o: S.CosineAnnealingLR(o, T_max=T)),
    "cosine_warmup": (
        {"lr": 0.5, "warmup": 0.25},  # w = 3 epochs
        lambda o: S.SequentialLR(
            o, [S.LinearLR(o, start_factor=1 / 4, end_factor=1.0, total_iters=3), S.CosineAnnealingLR(o, T_max=T - 3)], milestones=[3]
        ),
    ),
    "cosine_horizon": (
        {"lr": 0.5, "horizon": 0.5},  # H = 6 epochs, then the floor (0, clipped to the range)
        lambda o: S.SequentialLR(o, [S.CosineAnnealingLR(o, T_max=6), S.ConstantLR(o, factor=0.0, total_iters=T)], milestones=[6]),
    ),
    "one_cycle": (
        {"lr": 0.8, "pct_start": 0.3},
        lambda o: S.OneCycleLR(o, max_lr=0.8, total_steps=T, pct_start=0.3, anneal_strategy="cos", cycle_momentum=False),
    ),
    "wsd": (
        {"lr": 0.5, "decay_fraction": 0.25},  # warmup round(12/20) = 1 epoch, decay D = 3 epochs
        lambda o: S.SequentialLR(
            o,
            [
                S.LinearLR(o, start_factor=1 / 2, end_factor=1.0, total_iters=1),
                S.ConstantLR(o, factor=1.0, total_iters=0),
                S.LinearLR(o, start_factor=3 / 4, end_factor=0.0, total_iters=3),
            ],
            milestones=[1, T - 3],
        ),
    ),
    "schedule_free": (
        {"lr": 0.5, "warmup": 0.25},
        lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=1 / 4, total_iters=3), S.ConstantLR(o, factor=1.0, total_iters=0)], milestones=[3]),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixed_schedules_set_the_lr_of_their_torch_scheduler(name):
    params, make_scheduler = CASES[name]
    policy = make_policy(name, tiny().config, **params)
    lrs, _ = env_lrs(policy)
    assert len(lrs) == T
    reference = torch_lrs(make_scheduler, params["lr"])
    assert_same(lrs, reference)
    np.testing.assert_allclose(policy.lrs(), reference, rtol=1e-12, atol=1e-15)  # before the range clip, too


def test_the_one_cycle_floor_and_the_cosine_horizon_hold_are_clipped_to_the_range():
    lrs, _ = env_lrs(make_policy("cosine_horizon", tiny().config, lr=0.5, horizon=0.5))
    assert lrs[6:] == pytest.approx([LR_RANGE[0]] * (T - 6))


def test_plateau_follows_reduce_lr_on_plateau_step_by_step():
    # lr 0.5 on the tiny task overfits within 20 epochs: the scheduler cuts several times
    policy = make_policy("plateau", tiny(epochs=20).config, lr=0.5, patience=1)
    lrs, infos = env_lrs(policy, tiny(epochs=20), seed=0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=schedules.PLATEAU_FACTOR, patience=1)
    expected = []
    for info in infos[1:]:  # after each trained epoch
        expected.append(optimizer.param_groups[0]["lr"])
        scheduler.step(info["valid_loss"])
    assert_same(lrs, expected)
    assert len(set(np.round(lrs, 12))) >= 3, "the test must exercise at least two cuts"


def test_bold_driver_raises_after_improvement_and_cuts_otherwise():
    policy = make_policy("bold_driver", tiny(epochs=20).config, lr=0.5)
    lrs, infos = env_lrs(policy, tiny(epochs=20), seed=1)
    lr, expected = 0.5, [0.5]
    losses = [i["valid_loss"] for i in infos]
    for t in range(1, len(lrs)):
        lr = lr * (schedules.BOLD_UP if losses[t] < losses[t - 1] else schedules.BOLD_DOWN)
        expected.append(min(max(lr, LR_RANGE[0]), LR_RANGE[1]))
        lr = expected[-1]
    np.testing.assert_allclose(lrs, expected, rtol=2e-6)
    assert any(b > a for a, b in zip(lrs, lrs[1:])) and any(b < a for a, b in zip(lrs, lrs[1:]))


def test_policies_work_with_the_minimal_feature_set_and_single_observations():
    policy = make_policy("plateau", tiny().config, lr=0.5, patience=0, features="minimal")
    lrs, _ = env_lrs(policy, features="minimal")
    assert lrs[0] == pytest.approx(0.5, rel=1e-6)
    action, state = make_policy("cosine", tiny().config, lr=0.5).predict(np.zeros(8, np.float32))
    assert action.shape == (1,) and state is None
    assert lrenv.ActionMapping().to_lr(action[None], np.ones(1), np.array([LR_RANGE]))[0] == pytest.approx(0.5, rel=1e-6)


def test_fixed_schedule_replays_a_list():
    lrs = list(np.geomspace(1.0, 0.01, T))
    got, _ = env_lrs(schedules.FixedSchedule(lrs, LR_RANGE))
    np.testing.assert_allclose(got, lrs, rtol=2e-6)


def test_tuning_grids_give_every_baseline_the_same_budget():
    config = lrenv.make_task("MNIST1D-MLP-v0").config
    for name in BASELINES:
        grid = tuning_grid(name, config, 6)
        assert len(grid) == 6
        assert len({tuple(sorted(g.items())) for g in grid}) == 6
        for trial in grid:
            make_policy(name, config, **trial)
    lrs = sorted({g["lr"] for g in tuning_grid("constant", config, 6)})
    assert lrs[0] == pytest.approx(0.3 * config.default_lr) and lrs[-1] == pytest.approx(min(30 * config.default_lr, config.lr_range[1]))
    assert {g["lr"] for g in tuning_grid("cosine_horizon", config, 6)} == set(lr_grid(config, 3))


def test_bad_input_is_a_clear_error():
    config = tiny().config
    with pytest.raises(ValueError, match="unknown baseline 'cosin'.*cosine"):
        make_policy("cosin", config, lr=0.1)
    with pytest.raises(ValueError, match="even number"):
        tuning_grid("cosine", config, 3)
    with pytest.raises(ValueError, match="horizon must be in"):
        make_policy("cosine_horizon", config, lr=0.1, horizon=1.5)
    with pytest.raises(ValueError, match="'standard' feature set \\(8 values"):
        make_policy("cosine", config, lr=0.1).predict(np.zeros((2, 3)))
    with pytest.raises(TypeError):
        make_policy("cosine", config, lr=0.1, gamma=0.5)


def _hand_schedule_free_run(task, seed: int, lrs: list[float]) -> list[float]:
    """Run seed's model trained by a plain loop with schedulefree's optimizer and train()/eval() switches."""
    import schedulefree

    from lrenv.engine import run_seeds

    init_seed, order_seed = run_seeds(env_run_seed(seed))
    with torch.random.fork_rng(devices=[]):
        model = task.model(torch.Generator().manual_seed(init_seed))
    order = torch.Generator().manual_seed(order_seed)
    data = task.data()
    opt = schedulefree.SGDScheduleFree(model.parameters(), lr=task.config.default_lr, momentum=task.config.momentum)
    losses = []
    for lr in lrs:
        opt.train()
        for group in opt.param_groups:
            group["lr"] = lr
        perm = torch.randperm(len(data.train), generator=order)
        for idx in perm.split(task.config.batch_size):
            loss = task.loss(model(data.train.x[idx]), data.train.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        opt.eval()
        with torch.no_grad():
            losses.append(float(task.loss(model(data.valid.x), data.valid.y)))
    return losses


@pytest.mark.parametrize("batched", [False, None], ids=["loop", "stacked"])
def test_schedule_free_optimizer_trains_like_schedulefree_in_a_plain_loop(batched):
    from lrenv.env.episodes import EpisodeBatch

    task = tiny(epochs=4)
    engine = lrenv.Engine(lrenv.make_task(task, optimizer="schedulefree_sgd"), n_runs=2, device="cpu", batched=batched)
    assert engine.batched == (batched is None)
    batch = EpisodeBatch(engine, lrenv.EnvConfig())
    seeds = [5, 6]
    obs, _ = batch.start([0, 1], [env_run_seed(s) for s in seeds])
    policy = make_policy("schedule_free", task.config, lr=0.5, warmup=0.5)
    valid = []
    for _ in range(4):
        action, _ = policy.predict(obs)
        obs, _, _, _, infos = batch.step(action)
        valid.append([i["valid_loss"] for i in infos])
    for k, seed in enumerate(seeds):
        np.testing.assert_allclose([v[k] for v in valid], _hand_schedule_free_run(task, seed, policy.lrs()), rtol=1e-5)
    assert math.isfinite(valid[-1][0]) and valid[-1][0] < valid[0][0]
