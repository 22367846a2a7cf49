import numpy as np
import pytest
import torch

from lrenv import Engine, TaskConfig
from lrenv.engine import resolve_device, run_seeds
from lrenv.engine.optim import make_optimizer


def _train_alone(task, seed, lrs):
    """Reference: the same run trained with a plain loop and the matching torch optimizer."""
    init_seed, order_seed = run_seeds(seed)
    model = task.model(torch.Generator().manual_seed(init_seed))
    opt = make_optimizer(list(model.parameters()), task.config, task.config.default_lr)
    order = torch.Generator().manual_seed(order_seed)
    x, y = task.data().train.x, task.data().train.y
    for lr in lrs:
        for g in opt.param_groups:
            g["lr"] = lr
        perm = torch.randperm(len(x), generator=order)
        for idx in perm.split(task.config.batch_size):
            loss = task.loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "adamw"])
def test_engine_equals_plain_torch_loop(tiny_task, optimizer):
    lr_scale = 0.1 if optimizer.startswith("adam") else 1.0
    task = type(tiny_task)(optimizer=optimizer, weight_decay=0.01, default_lr=0.1 * lr_scale)
    lrs = [0.3 * lr_scale, 0.05 * lr_scale, 0.01 * lr_scale]
    engine = Engine(task, n_runs=1, device="cpu")
    engine.reset([7])
    for lr in lrs:
        engine.run_epoch([lr])
    reference = _train_alone(task, 7, lrs)
    for got, want in zip(engine.model(0).parameters(), reference.parameters()):
        torch.testing.assert_close(got, want)


def test_population_runs_are_independent_and_seeded(tiny_task):
    engine = Engine(tiny_task, n_runs=3, device="cpu")
    start = engine.reset([1, 2, 1])
    assert start.valid_loss[0] == start.valid_loss[2] != start.valid_loss[1]
    stats = engine.run_epoch([0.1, 0.1, 0.01])
    assert stats.valid_loss[0] != stats.valid_loss[2]  # same seed, other LR
    again = Engine(tiny_task, n_runs=3, device="cpu")
    again.reset([1, 2, 1])
    np.testing.assert_array_equal(again.run_epoch([0.1, 0.1, 0.01]).valid_loss, stats.valid_loss)


def test_epoch_stats_are_real_numbers(tiny_task):
    engine = Engine(tiny_task, n_runs=1, device="cpu")
    start = engine.reset([0])
    assert start.train_loss_std[0] == 0 and 0 <= start.metrics["accuracy"][0] <= 1
    stats = engine.run_epoch([0.1])
    assert stats.valid_loss[0] < start.valid_loss[0]
    assert stats.train_loss_std[0] > 0
    assert not stats.diverged[0]
    loss, metrics = engine.evaluate("valid")
    assert loss[0] == pytest.approx(stats.valid_loss[0])
    test_loss, test_metrics = engine.evaluate("test")
    assert test_loss.shape == (1,) and 0 <= test_metrics["accuracy"][0] <= 1


def test_reset_one_run_leaves_others(tiny_task):
    engine = Engine(tiny_task, n_runs=2, device="cpu")
    engine.reset([3, 4])
    trained = engine.run_epoch([0.1, 0.1]).valid_loss[1]
    fresh = engine.reset([5], runs=[0])
    assert len(fresh) == 1
    loss, _ = engine.evaluate("valid")
    assert loss[1] == pytest.approx(trained) and loss[0] == pytest.approx(fresh.valid_loss[0])


def test_divergence_is_reported_not_raised(tiny_task):
    engine = Engine(tiny_task, n_runs=2, device="cpu")
    engine.reset([0, 0])
    stats = engine.run_epoch([30.0, 0.1])
    assert stats.diverged.tolist() == [True, False]


def test_bad_inputs_are_clear_errors(tiny_task):
    engine = Engine(tiny_task, n_runs=2, device="cpu")
    with pytest.raises(RuntimeError, match="reset"):
        engine.run_epoch([0.1, 0.1])
    engine.reset([0, 1])
    with pytest.raises(ValueError, match="2 runs"):
        engine.run_epoch([0.1])
    with pytest.raises(ValueError, match="finite"):
        engine.run_epoch([float("nan"), 0.1])
    with pytest.raises(ValueError, match="it has train, valid, test"):
        engine.evaluate("holdout")
    with pytest.raises(ValueError, match="n_runs"):
        Engine(tiny_task, n_runs=0)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="invalid device"):
        resolve_device("tpu-9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_task_config_validation():
    with pytest.raises(ValueError, match="choose one of sgd, momentum, adam, adamw"):
        TaskConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="lr_range"):
        TaskConfig(lr_range=(1.0, 0.1))
    with pytest.raises(ValueError, match="default_lr"):
        TaskConfig(lr_range=(1e-3, 1e-2), default_lr=0.1)


def _continue(engine, lrs):
    return [engine.run_epoch(lr) for lr in lrs]


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("optimizer", ["momentum", "adamw", "schedulefree_sgd", "schedulefree_adamw"])
def test_snapshot_restores_a_population_exactly(tiny_task, optimizer, batched):
    lr_scale = 0.1 if "adam" in optimizer else 1.0
    task = type(tiny_task)(optimizer=optimizer, weight_decay=0.01, default_lr=0.1 * lr_scale)
    engine = Engine(task, n_runs=2, device="cpu", batched=batched)
    engine.reset([3, 4])
    for lr in (0.3, 0.1):
        engine.run_epoch([lr * lr_scale, 2 * lr * lr_scale])
    saved = engine.state_dict()
    later = [[0.05 * lr_scale, 0.2 * lr_scale]] * 3
    first = _continue(engine, later)
    engine.load_state_dict(saved)
    second = _continue(engine, later)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.valid_loss, b.valid_loss)
        np.testing.assert_array_equal(a.train_loss, b.train_loss)
    # the snapshot is a copy: training on did not change it, and it survives a weights-only save
    buffer = __import__("io").BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    engine.load_state_dict(torch.load(buffer, weights_only=True))
    np.testing.assert_array_equal(_continue(engine, later)[-1].valid_loss, first[-1].valid_loss)


@pytest.mark.parametrize("batched", [False, True])
def test_branching_a_run_into_another_engine(tiny_task, batched):
    task = type(tiny_task)(optimizer="adam", default_lr=0.01)
    source = Engine(task, n_runs=1, device="cpu", batched=batched)
    source.reset([11])
    source.run_epoch([0.01])
    state = source.run_state(0)
    source.run_epoch([0.003])
    alone = source.run_epoch([0.003])
    branches = Engine(task, n_runs=3, device="cpu", batched=batched)  # never reset: branching initialises it
    branches.load_run_state([0, 1, 2], state, seeds=None)
    branches.run_epoch([0.003] * 3)
    together = branches.run_epoch([0.003] * 3)
    np.testing.assert_allclose(together.valid_loss, alone.valid_loss[0], rtol=1e-5)
    # fresh data orders from branch seeds: same start, different noise
    branches.load_run_state([0, 1, 2], state, seeds=[1, 2, 1])
    noisy = branches.run_epoch([0.003] * 3)
    assert noisy.valid_loss[0] == noisy.valid_loss[2] != noisy.valid_loss[1]
    with pytest.raises(ValueError, match="same batched= setting"):
        Engine(task, n_runs=2, device="cpu", batched=not batched).load_run_state([0], state)
    with pytest.raises(ValueError, match="2 seeds for 3 runs"):
        branches.load_run_state([0, 1, 2], state, seeds=[1, 2])
