import math

import numpy as np
import pytest

from lrenv import Engine
from lrenv.agents import surface as surface_cli
from lrenv.surface import Surface, fit_surface_network, lr_grid, measure_aims, measure_surface, schedule_lrs


def test_branches_continue_the_reference_state(tiny_task):
    """Each row is the reference run at epoch i, trained one epoch at its LR with its seed's data order."""
    reference_lrs = [0.3, 0.2, 0.1, 0.05]
    task = type(tiny_task)(epochs=4)
    grid = [0.01, 0.1, 1.0]
    surface = measure_surface(task, reference_lrs, grid, seeds=2, branch_epochs=[0, 2], reference_seed=5)
    assert len(surface.rows) == 2 * 3 * 2
    assert [r["epoch"] for r in surface.rows[:6]] == [0] * 6
    assert [r["lr"] for r in surface.rows[:6]] == [0.01, 0.01, 0.1, 0.1, 1.0, 1.0]
    # rebuild the branch (epoch 2, LR 0.1, second seed) by hand
    engine = Engine(task, n_runs=1, batched=False)
    engine.reset([5])
    for lr in reference_lrs[:2]:
        reached = engine.run_epoch([lr])
    assert row_ref_valid(surface, 2) == pytest.approx(float(reached.valid_loss[0]), rel=1e-6)
    state = engine.run_state(0)
    row = surface.rows[6 + 3]
    assert (row["epoch"], row["lr"]) == (2, 0.1)
    branch = Engine(task, n_runs=1, batched=False)
    branch.load_run_state([0], state, seeds=[row["seed"]])
    one = branch.run_epoch([0.1])
    np.testing.assert_allclose(row["valid_loss"], one.valid_loss[0], rtol=1e-5)
    np.testing.assert_allclose(row["rate_valid"], math.log(row["ref_valid_loss"] / one.valid_loss[0]), rtol=1e-4)
    final = branch.run_epoch([0.1])  # 4 epochs in all: the branch goes on to the end at its LR
    np.testing.assert_allclose(row["final_valid_loss"], final.valid_loss[0], rtol=1e-5)
    assert len(surface.reference_valid) == 5 and surface.reference_valid[2] == row["ref_valid_loss"]


def row_ref_valid(surface, epoch):
    return next(r["ref_valid_loss"] for r in surface.rows if r["epoch"] == epoch)


def _synthetic(rates, finals, diverged=None) -> Surface:
    """A surface of 2 branch epochs x 3 LRs x 2 seeds with given rates and final losses [E, G]."""
    s = Surface("Synthetic", 4, np.array([0.01, 0.1, 1.0]), [0, 2], [0.1] * 4, [1.0] * 5)
    for e, epoch in enumerate((0, 2)):
        for g in range(3):
            for k in range(2):
                bad = bool(diverged is not None and diverged[e][g])
                s.rows.append(
                    {"epoch": epoch, "progress": epoch / 4, "lr": s.lrs[g], "seed": k, "rate_valid": math.nan if bad else rates[e][g] + 0.01 * k,
                     "rate_train": 0.0, "diverged": float(bad), "final_valid_loss": math.nan if bad else finals[e][g], "final_diverged": float(bad)}
                )  # fmt: skip
    return s


def test_ridges_and_the_short_horizon_bias():
    # the greedy ridge likes the big LR; the final loss likes the middle one at epoch 2
    s = _synthetic(rates=[[0.1, 0.5, 0.9], [0.1, 0.2, 0.3]], finals=[[0.5, 0.3, 0.4], [0.5, 0.2, 0.6]])
    np.testing.assert_array_equal(s.greedy_ridge(), [1.0, 1.0])
    np.testing.assert_array_equal(s.final_ridge(), [0.1, 0.1])
    # a diverged cell is never a ridge, however good its other seeds look
    s = _synthetic(rates=[[0.1, 0.5, 0.9], [0.1, 0.2, 0.3]], finals=[[0.5, 0.3, 0.1], [0.5, 0.2, 0.6]], diverged=[[0, 0, 1], [0, 0, 0]])
    assert s.greedy_ridge()[0] == 0.1 and s.final_ridge()[0] == 0.1
    table = s.table()
    assert len(table) == 6 and table[2]["diverged_share"] == 1.0 and math.isnan(table[2]["rate_valid_mean"])
    assert table[1]["rate_valid_mean"] == pytest.approx(0.505) and table[1]["rate_valid_std"] == pytest.approx(0.01 / math.sqrt(2))


def test_surface_network_fits_a_smooth_surface():
    s = Surface("Synthetic", 10, lr_grid((1e-3, 1.0), 7), list(range(0, 10, 2)), [0.1] * 10, [1.0] * 11)
    for epoch in s.branch_epochs:
        for lr in s.lrs:
            for k in range(3):
                # final loss is lowest at LR 10^(-1 - 0.1 epoch): the best LR falls over the run
                value = math.exp(0.3 * (math.log10(lr) + 1 + 0.1 * epoch) ** 2 - 1) * (1 + 0.002 * k)
                s.rows.append({"epoch": epoch, "progress": epoch / 10, "lr": lr, "seed": k, "final_valid_loss": value, "final_diverged": 0.0})
    net = fit_surface_network(s)
    assert net.r2_train > 0.99 and net.r2_heldout > 0.95
    best = np.log10(net.schedule(10))
    np.testing.assert_allclose(best, [-1 - 0.1 * i for i in range(10)], atol=0.2)


def test_aims_of_a_schedule_family(tiny_task):
    task = type(tiny_task)(epochs=3, target_loss=0.6)
    episodes = measure_aims(task, [0.05, 0.5], ["constant", "cosine"], [1, 2])
    assert len(episodes) == 8
    assert {(e.method, e.params["lr"]) for e in episodes} == {(s, p) for s in ("constant", "cosine") for p in (0.05, 0.5)}
    cosine = next(e for e in episodes if e.method == "cosine" and e.params["lr"] == 0.5)
    assert cosine.lrs == pytest.approx(schedule_lrs("cosine", 0.5, task))
    rows = surface_cli.aims_table(episodes)
    assert len(rows) == 4 and all(0 <= r["accepted_share"] <= 1 for r in rows)


def test_bad_input_is_named(tiny_task):
    with pytest.raises(ValueError, match="reference schedule has 2 LRs; the task trains"):
        measure_surface(tiny_task, [0.1, 0.1], [0.1])
    with pytest.raises(ValueError, match="branch epochs must lie in"):
        measure_surface(type(tiny_task)(epochs=2), [0.1, 0.1], [0.1], branch_epochs=[5])
    with pytest.raises(ValueError, match="positive finite"):
        measure_surface(type(tiny_task)(epochs=2), [0.1, 0.1], [0.1, -1.0])
    with pytest.raises(ValueError, match="unknown schedule shape 'spiky'"):
        schedule_lrs("spiky", 0.1, tiny_task)
    with pytest.raises(ValueError, match="--lrs must be at least 2"):
        surface_cli.settings(surface_cli.parse_args(["--lrs", "1"]))


def test_fits_never_see_the_evaluation_or_tuning_runs():
    from lrenv.agents.distill import DISTILL_SEED_BASE
    from lrenv.evaluation.protocol import eval_seeds, tune_seeds

    harness = set(eval_seeds(1000)) | set(tune_seeds(1000))
    fitted = set(surface_cli.aims_seeds(0, 100)) | set(surface_cli.aims_seeds(7, 100)) | set(range(DISTILL_SEED_BASE, DISTILL_SEED_BASE + 9000))
    assert not harness & fitted


def test_surface_command_end_to_end(tmp_path):
    out = tmp_path / "surface"
    argv = ["--task", "Digits-MLP-v0", "--quick", "--lrs", "4", "--seeds", "2", "--branch-every", "7", "--peaks", "4", "--aim-seeds", "2"]
    summary = surface_cli.main([*argv, "--workers", "0", "--no-cache", "--track", "--out", str(out)])
    assert list((out / "wandb").glob("offline-run-*")), "--track logs an offline W&B run (conftest: WANDB_MODE=offline)"
    written = ("surface.csv", "branches.csv", "aims.csv", "surface.png", "aims.png", "law.png", "law.json", "law_schedule.json", "network_schedule.json")
    for name in (*written, "results.md"):
        assert (out / name).stat().st_size > 0, name
    assert len(summary["short_horizon_bias"]["greedy_lr"]) == 3  # branch epochs 0, 7, 14
    assert summary["law"]["fit"]["n_points"] > 0 and len(summary["law"]["fit_runs"]) <= surface_cli.LAW_RUNS
    methods = {r["method"] for r in summary["comparison"]}
    assert {"law-Digits-MLP-v0", "network-Digits-MLP-v0", "greedy-ridge", "best-fixed-ridge", "default", "cosine"} <= methods
    assert summary["law_on_train_loss"]["fit"]["n_points"] > 0
