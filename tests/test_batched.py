"""A population trained as one computation equals its runs trained alone."""

import numpy as np
import pytest
import torch
from conftest import TinyCharModel, TinyClassifier, TinyConvClassifier, TinyCustomModel, TinyDeepClassifier, TinyGRU, TinyLSTM

from lrenv import Engine

SEEDS = [3, 4, 5, 6]
#: The equivalence also runs on CUDA where there is one (issue 3's GPU check).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# per run (columns) and per epoch (rows)
LRS = np.array([[0.2, 0.05, 0.02, 0.1], [0.03, 0.1, 0.01, 0.05], [0.01, 0.01, 0.05, 0.02]])


def _population_and_alone(task, lrs, device="cpu"):
    population = Engine(task, n_runs=len(SEEDS), device=device, batched=True)
    population.reset(SEEDS)
    for epoch_lrs in lrs:
        together = population.run_epoch(epoch_lrs)
    alone = []
    for k, seed in enumerate(SEEDS):
        single = Engine(task, n_runs=1, device=device)
        single.reset([seed])
        for epoch_lrs in lrs:
            stats = single.run_epoch(epoch_lrs[k : k + 1])
        alone.append((stats, single.model(0)))
    return population, together, alone


@pytest.mark.parametrize(
    "task_class",
    [TinyClassifier, TinyDeepClassifier, TinyConvClassifier, TinyCharModel, TinyCustomModel, TinyGRU],
    ids=[
        "hand-written MLP",
        "hand-written MLP, flat cross-entropy",
        "hand-written convolutions",
        "hand-written embedding, GRU, per-position linear",
        "vmap autograd",
        "vmap autograd, unrolled GRU",
    ],
)
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "adamw"])
@pytest.mark.parametrize("device", DEVICES)
def test_batched_runs_equal_runs_alone(task_class, optimizer, device):
    scale = 0.01 if optimizer.startswith("adam") else 1.0
    task = task_class(optimizer=optimizer, weight_decay=0.01, default_lr=0.1 * scale)
    population, together, alone = _population_and_alone(task, LRS * scale, device)
    assert population.batched
    trainer = population.trainer
    hand_written = (TinyClassifier, TinyDeepClassifier, TinyConvClassifier, TinyCharModel)
    assert trainer.hand_written == (task_class in hand_written)
    assert trainer._flat_cross_entropy == (task_class in (TinyDeepClassifier, TinyConvClassifier, TinyCharModel))
    for k, (stats, model) in enumerate(alone):
        assert together.valid_loss[k] == pytest.approx(stats.valid_loss[0], rel=1e-5)
        assert together.train_loss[k] == pytest.approx(stats.train_loss[0], rel=1e-5)
        assert together.metrics["accuracy"][k] == pytest.approx(stats.metrics["accuracy"][0])
        for got, want in zip(population.model(k).parameters(), model.parameters()):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # the runs really differ from each other
    assert len(set(np.round(together.valid_loss, 6))) == len(SEEDS)


@pytest.mark.parametrize("task_class", [TinyDeepClassifier, TinyCharModel], ids=["MLP", "GRU"])
@pytest.mark.parametrize("optimizer", ["schedulefree_sgd", "schedulefree_adamw"])
def test_schedule_free_population_equals_runs_alone(task_class, optimizer):
    """Stacked Schedule-Free (lrenv.engine.optim) against the schedulefree package's optimizer, run by run."""
    scale = 0.01 if optimizer == "schedulefree_adamw" else 1.0
    task = task_class(optimizer=optimizer, weight_decay=0.01)
    population, together, alone = _population_and_alone(task, LRS * scale)
    assert population.batched and not Engine(task, n_runs=1).batched
    for k, (stats, model) in enumerate(alone):
        assert together.valid_loss[k] == pytest.approx(stats.valid_loss[0], rel=1e-5)
        for got, want in zip(population.model(k).parameters(), model.parameters()):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # a run restarted mid-way starts its averaging afresh, like a new optimizer
    population.reset([11], runs=[2])
    restarted = population.run_epoch(LRS[0] * scale)
    single = Engine(task, n_runs=1)
    single.reset([11])
    assert restarted.valid_loss[2] == pytest.approx(single.run_epoch(LRS[0][2:3] * scale).valid_loss[0], rel=1e-5)


def test_unbatchable_model_falls_back_to_a_loop_with_a_notice():
    with pytest.warns(UserWarning, match="cannot be batched .*training its 4 runs in a loop"):
        population, together, alone = _population_and_alone(TinyLSTM(), LRS)
    assert not population.batched and population.fallback_reason
    for k, (stats, _) in enumerate(alone):
        assert together.valid_loss[k] == pytest.approx(stats.valid_loss[0], rel=1e-6)


def test_recurrent_models_loop_on_a_cpu_unless_batched_is_asked_for():
    with pytest.warns(UserWarning, match="recurrent modules are stacked only on CUDA or with batched=True"):
        default = Engine(TinyGRU(), n_runs=2, device="cpu")
    assert not default.batched
    assert Engine(TinyGRU(), n_runs=2, device="cpu", batched=True).batched


def test_a_diverging_run_is_reset_alone():
    task = TinyClassifier()
    population = Engine(task, n_runs=3, device="cpu")
    population.reset([0, 1, 2])
    stats = population.run_epoch([0.1, 30.0, 0.1])
    assert stats.diverged.tolist() == [False, True, False]
    loss_before, _ = population.evaluate("valid")
    fresh = population.reset([7], runs=[1])
    assert np.isfinite(fresh.valid_loss[0]) and not fresh.diverged[0]
    loss_after, _ = population.evaluate("valid")
    assert loss_after[0] == loss_before[0] and loss_after[2] == loss_before[2]  # untouched
    stats = population.run_epoch([0.1, 0.1, 0.1])
    assert not stats.diverged.any()
    # the restarted run trains as a fresh run of seed 7 alone
    single = Engine(task, n_runs=1, device="cpu")
    single.reset([7])
    assert stats.valid_loss[1] == pytest.approx(single.run_epoch([0.1]).valid_loss[0], rel=1e-5)
