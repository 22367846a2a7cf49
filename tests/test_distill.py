import dataclasses
import json
import math

import numpy as np
import pytest

from lrenv import load_policy, make_task
from lrenv.agents import distill
from lrenv.env.features import FEATURE_SETS
from lrenv.evaluation.protocol import Job, PolicyRef, Slot, env_run_seed
from lrenv.evaluation.runner import run_job
from lrenv.formula import Formula, load_formula

NAMES = [f.name for f in FEATURE_SETS["relative"]]


def _digits_only(policy):
    """The shipped RL policy, with its training distribution cut to one fast variant."""
    config = {**policy.config, "populations": [{"task": "Digits-MLP-v0", "n_envs": 1, "task_config": {"epochs": 6}}]}
    return dataclasses.replace(policy, config=config)


def test_labels_are_the_lrs_the_policy_sets():
    """Round 0: the expert drives; its label at each state is the log ratio the env then applies."""
    policy = _digits_only(load_policy("ars"))
    seeds = [env_run_seed(s) for s in (1, 2)]
    x, y, ids = distill.collect(policy, None, seeds)
    assert x.shape == (2 * 6, len(NAMES)) and y.shape == (12,)
    # the same episodes with the policy itself in the harness, in its own (cosine-base) env
    env = policy.env_config.replace(task_config={"epochs": 6})
    slots = [Slot("p", (), s, "eval", PolicyRef("object", name="p", obj=policy)) for s in seeds]
    episodes = run_job(Job("Digits-MLP-v0", env, slots))
    base = make_task("Digits-MLP-v0").config.default_lr
    for k, episode in enumerate(episodes):
        np.testing.assert_allclose(np.exp(y[ids == k]), np.array(episode.lrs) / base, rtol=1e-5)
    assert np.allclose(x[ids == 0][:, NAMES.index("progress")], np.arange(6) / 6)


def test_a_formula_drives_and_the_expert_labels():
    policy = _digits_only(load_policy("ars"))
    learner = Formula("0.3 + 0*progress")
    x, y, ids = distill.collect(policy, learner, [env_run_seed(3)])
    # the formula set the LRs: lr_ratio after epoch 1 reads log(0.3); the labels are the expert's own
    np.testing.assert_allclose(x[1:, NAMES.index("lr_ratio")], math.log(0.3), rtol=1e-5)
    assert not np.allclose(y, math.log(0.3))


def test_symbolic_regression_finds_a_short_law():
    rng = np.random.default_rng(0)
    x = np.zeros((400, len(NAMES)))
    x[:, NAMES.index("progress")] = rng.uniform(0, 1, 400)
    x[:, NAMES.index("valid_loss")] = rng.uniform(-3, 0, 400)
    y = 0.4 - 2.0 * x[:, 0] + 0.3 * x[:, NAMES.index("valid_loss")]
    held = np.arange(400) % 5 == 0
    args = distill.parse_args(["--generations", "40", "--population-size", "200"])
    candidates = distill.symbolic_fit(x, y, held, NAMES, "relative", args)
    best = distill.choose(candidates, 10)
    assert best.r2_heldout > 0.999 and best.length <= 10
    assert set(best.formula.variables) == {"progress", "valid_loss"}
    assert [c.length for c in candidates] == sorted(c.length for c in candidates)
    with pytest.raises(ValueError, match="at most 0 operations"):
        distill.choose(candidates, 0)


def test_distil_a_schedule_file(tmp_path):
    task = make_task("Digits-MLP-v0")
    lrs = [0.1 * 0.5 * (1 + math.cos(math.pi * i / task.config.epochs)) + 0.001 for i in range(task.config.epochs)]
    source = tmp_path / "law_schedule.json"
    source.write_text(json.dumps({"format": "lrenv-schedule", "version": 1, "name": "law-x", "task": "Digits-MLP-v0", "lrs": lrs}))
    out = tmp_path / "distilled"
    summary = distill.main([str(source), "--out", str(out), "--generations", "60", "--check-seeds", "2", "--workers", "0"])
    policy = load_formula(out / "formula.json")
    assert policy.model.formula.variables == ("progress",)
    ratio = policy.model.formula(np.column_stack([np.arange(20) / 20, np.zeros((20, len(NAMES) - 1))]))
    np.testing.assert_allclose(ratio * task.config.default_lr, lrs, rtol=0.15, atol=2e-3)
    assert summary["fit"]["r2_train"] > 0.95
    assert (out / "pareto.csv").exists() and (out / "check.md").exists()
    row = summary["check"][0]
    assert abs(row["formula vs source %"]) < 5


def test_bad_sources_are_named(tmp_path):
    wrong = tmp_path / "x.json"
    wrong.write_text(json.dumps({"format": "something-else"}))
    law = tmp_path / "law.json"
    law.write_text(json.dumps({"format": "lrenv-law", "version": 1, "task": "Digits-MLP-v0", "optimal_lrs": [0.1] * 20}))
    assert distill.read_schedule(law) == {"format": "lrenv-schedule", "name": "law-Digits-MLP-v0", "task": "Digits-MLP-v0", "lrs": [0.1] * 20}
    with pytest.raises(ValueError, match="neither an lrenv-schedule file nor a law fit"):
        distill.main([str(wrong), "--out", str(tmp_path / "o"), "--check-seeds", "0"])
    with pytest.raises(ValueError, match="--rounds must be at least 1"):
        distill.parse_args(["--rounds", "0"])
