"""The evaluation harness: paired seeds, LREnv-equivalent episodes, statistics, the CLI."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from conftest import TinyClassifier

import lrenv
from lrenv import evaluation
from lrenv.baselines import make_policy
from lrenv.evaluation import Contender, Job, PolicyRef, Slot, compare, env_run_seed, run_job
from lrenv.schedules import Constant


def tiny(epochs: int = 5) -> TinyClassifier:
    task = TinyClassifier(epochs=epochs)
    task.name = "Tiny-v0"
    return task


class StandInPolicy:
    """What ``lrenv.load_policy`` returns, without SB3: a fixed rule on the observation."""

    def __init__(self, name: str = "standin", features: str = "standard") -> None:
        self.name = name
        self.tasks = ["Tiny-v0"]
        self.env_config = lrenv.EnvConfig(features=features)

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float32)
        return (0.2 - 1.2 * obs[..., :1]).astype(np.float32)  # high early, low late (index 0: progress)


class ConstantStandIn(StandInPolicy):
    """A "learned" policy that asks for one LR: it must train exactly as the constant baseline."""

    def __init__(self, lr: float, lr_range) -> None:
        super().__init__("constant-standin")
        self.lr, self.lr_range = lr, lr_range

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        low, high = self.lr_range
        a = 2 * math.log(self.lr / low) / math.log(high / low) - 1
        return np.full((len(obs), 1), a, dtype=np.float32)


def lrenv_episode(task, policy, seed: int, dtype: str = "float64", features: str = "standard") -> tuple[int, list[float], list[float]]:
    """Run seed, LRs and validation losses of an LREnv episode driven by ``policy``."""
    env = lrenv.LREnv(task, device="cpu", dtype=dtype, features=features)
    obs, info = env.reset(seed=seed)
    run_seed, lrs, losses, state, done = info["run_seed"], [], [info["valid_loss"]], None, False
    while not done:
        if hasattr(policy, "stateful"):
            action, state = policy.predict(obs[None], state=state)
        else:
            action = policy.predict(obs[None])
        obs, _, terminated, truncated, info = env.step(np.asarray(action)[0])
        lrs.append(info["lr"])
        losses.append(info["valid_loss"])
        done = terminated or truncated
    return run_seed, lrs, losses


def test_env_run_seed_is_the_run_seed_lrenv_draws():
    env = lrenv.LREnv(tiny(), device="cpu")
    for seed in (0, 1, 10_000, 123_456):
        assert env_run_seed(seed) == env.reset(seed=seed)[1]["run_seed"]


def test_a_method_sees_exactly_the_lrenv_episode_of_its_seed():
    task = tiny(epochs=6)
    cosine = PolicyRef("baseline", name="cosine", params=(("lr", 0.8),))
    plateau = PolicyRef("baseline", name="plateau", params=(("lr", 0.5), ("patience", 0)))
    standin = StandInPolicy()
    slots = [
        Slot("cosine", cosine.params, 3, "eval", cosine),
        Slot("plateau", plateau.params, 7, "eval", plateau),
        Slot("standin", (), 3, "eval", PolicyRef("object", name="standin", obj=standin)),
        Slot("cosine", cosine.params, 7, "eval", cosine),
    ]
    job = Job(task, lrenv.EnvConfig(dtype="float64", device="cpu"), slots)
    episodes = run_job(job)
    policies = {
        "cosine": make_policy("cosine", task.config, lr=0.8),
        "plateau": make_policy("plateau", task.config, lr=0.5, patience=0),
        "standin": standin,
    }
    for slot, episode in zip(slots, episodes):
        run_seed, lrs, losses = lrenv_episode(task, policies[slot.method], slot.seed)
        assert episode.run_seed == run_seed
        np.testing.assert_allclose(episode.lrs, lrs, rtol=1e-12)
        np.testing.assert_allclose(episode.valid_loss, losses, rtol=1e-9)  # the population is stacked: float rounding only
    assert episodes[0].run_seed == episodes[2].run_seed


def test_a_learned_policy_and_a_baseline_train_identical_runs():
    task = tiny(epochs=5)
    lr = 0.3
    base = PolicyRef("baseline", name="constant", params=(("lr", lr),))
    learned = PolicyRef("object", name="constant-standin", obj=ConstantStandIn(lr, task.config.lr_range))
    seeds = [11, 12, 13]
    slots = [Slot("constant", base.params, s, "eval", base) for s in seeds] + [Slot("standin", (), s, "eval", learned) for s in seeds]
    episodes = run_job(Job(task, lrenv.EnvConfig(dtype="float64", device="cpu"), slots, batched=False))
    for a, b in zip(episodes[:3], episodes[3:]):
        assert a.seed == b.seed and a.run_seed == b.run_seed
        np.testing.assert_allclose(a.lrs, b.lrs, rtol=1e-6)  # float32 actions
        np.testing.assert_allclose(a.valid_loss, b.valid_loss, rtol=1e-5)  # same init, same data order
        assert a.test_loss == pytest.approx(b.test_loss, rel=1e-5)


@pytest.fixture
def fake_runs(monkeypatch):
    """``lrenv.load_policy`` returning stand-ins (agents.train's real one is tested elsewhere)."""
    loaded = {}

    def load_policy(path, device="cpu"):
        loaded[path] = StandInPolicy(name=f"learned-{path.rsplit('/', 1)[-1]}")
        return loaded[path]

    monkeypatch.setattr(lrenv.policy, "load_policy", load_policy)
    return loaded


def test_compare_adds_learned_policies_on_the_same_seeds(fake_runs, tmp_path):
    contender = evaluation.load_run(str(tmp_path / "run1"))
    assert contender.name == "learned-run1" and contender.env == lrenv.EnvConfig()
    results = compare([tiny()], baselines=["constant", "cosine", "schedule_free"], contenders=[contender], eval_seeds=4, tune_seeds=2, trials=2)
    assert results.methods == ["constant", "cosine", "schedule_free", "learned-run1"]
    assert results.kinds["learned-run1"] == "learned" and results.kinds["schedule_free"] == "reference"
    env = lrenv.LREnv(tiny(), device="cpu")
    expected = {s: env.reset(seed=s)[1]["run_seed"] for s in evaluation.eval_seeds(4)}
    for method in results.methods:
        eps = results.evaluation("Tiny-v0", method)
        assert {e.seed: e.run_seed for e in eps} == expected  # paired: identical runs for every method
    tune = {e.seed for e in results.episodes if e.role == "tune"}
    assert tune == set(evaluation.tune_seeds(2)) and not tune & set(expected)
    rows = {r["method"]: r for r in results.summary()}
    best = results.best_baseline("Tiny-v0")
    assert best in ("constant", "cosine") and rows[best]["tuning_score"] == max(rows[m]["tuning_score"] for m in ("constant", "cosine"))
    learned = rows["learned-run1"]
    assert 0 <= learned["win_rate"] <= 1 and learned["seeds"] == 4
    diffs = [e.final_loss - b.final_loss for e, b in zip(results.evaluation("Tiny-v0", "learned-run1"), results.evaluation("Tiny-v0", best))]
    assert learned["delta_mean"] == pytest.approx(np.mean(diffs))
    assert learned["delta_se"] == pytest.approx(np.std(diffs, ddof=1) / 2)
    assert learned["win_rate"] == pytest.approx(np.mean(np.array(diffs) < 0))
    assert sorted(r["rank"] for r in rows.values()) == [1, 2, 3, 4]
    assert learned["held_out"] is False and rows["cosine"]["held_out"] is None  # the stand-in "trained" on Tiny-v0
    assert "learned-run1 (learned, trained on this task)" in results.to_markdown()


def test_results_are_reproducible_and_cached(tmp_path, monkeypatch):
    kwargs = dict(baselines=["cosine_horizon", "bold_driver"], eval_seeds=3, tune_seeds=2, trials=2, task_config={"epochs": 3})
    first = compare(["Digits-MLP-v0"], cache_dir=tmp_path, **kwargs)
    again = compare(["Digits-MLP-v0"], **kwargs)  # recomputed, no cache
    assert first.to_markdown() == again.to_markdown()
    assert [e.valid_loss for e in first.episodes] == [e.valid_loss for e in again.episodes]
    monkeypatch.setattr(evaluation, "run_job", lambda *a, **k: pytest.fail("a cached population was recomputed"))
    cached = compare(["Digits-MLP-v0"], cache_dir=tmp_path, **kwargs)
    assert cached.to_markdown() == first.to_markdown()


def test_worker_processes_give_the_in_process_results():
    kwargs = dict(baselines=["constant", "schedule_free"], eval_seeds=2, tune_seeds=2, trials=2, task_config={"epochs": 2}, population=4)
    local = compare(["Digits-MLP-v0"], **kwargs)
    pooled = compare(["Digits-MLP-v0"], workers=1, **kwargs)  # one spawned worker: the pool path
    assert [(e.method, e.seed, e.valid_loss) for e in pooled.episodes] == [(e.method, e.seed, e.valid_loss) for e in local.episodes]


def test_no_tuned_baseline_beats_the_optimal_schedule_on_the_noisy_quadratic():
    # 8 epochs keep it quick; the optimal schedule is recomputed for that budget
    results = compare(["NoisyQuadratic-v0"], eval_seeds=5, tune_seeds=2, trials=4, task_config={"epochs": 8})
    rows = {r["method"]: r for r in results.summary()}
    assert results.kinds["optimal"] == "reference"
    optimal = rows["optimal"]
    assert optimal["rank"] == 1
    for method, row in rows.items():
        if results.kinds[method] == "baseline":
            assert row["valid_loss_mean"] > optimal["valid_loss_mean"], method
    best = rows[results.best_baseline("NoisyQuadratic-v0")]
    assert optimal["delta_mean"] < 0 and optimal["win_rate"] >= 0.5
    task = lrenv.make_task("NoisyQuadratic-v0", epochs=8)
    assert optimal["valid_loss_mean"] == pytest.approx(task.expected_losses(task.optimal_schedule())[-1], rel=0.2)
    # tuning works: the best baseline beats the untuned default constant LR (expected 0.128 after 8 epochs)
    assert best["valid_loss_mean"] < 0.5 * task.expected_losses([task.config.default_lr] * 8)[-1]


def test_cli_writes_tables_csv_and_plots(fake_runs, tmp_path, capsys):
    from lrenv.agents import evaluate

    out = tmp_path / "out"
    argv = ["--tasks", "Digits-MLP-v0", "--quick", "--workers", "0", "--no-cache", "--no-progress", "--out", str(out)]
    results = evaluate.main(argv + ["--runs", str(tmp_path / "myrun"), "--baselines", "constant", "cosine", "plateau", "--track"])
    for name in ("results.md", "summary.csv", "tuning.csv", "episodes.csv", "settings.json", "plots/Digits-MLP-v0.png", "plots/aggregate.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["constant", "cosine", "plateau", "learned-myrun"]
    assert rows[-1]["win_rate"] != "nan" and rows[-1]["seeds"] == "3"
    assert "learned-myrun" in (out / "results.md").read_text()
    assert results.settings["trials"] == 2 and results.settings["task_config"] == {"epochs": 4}
    printed = capsys.readouterr().out
    assert "Wall time" in printed and "## Digits-MLP-v0" in printed
    assert list((out / "wandb").glob("offline-run-*")), "--track logs an offline W&B run (conftest: WANDB_MODE=offline)"


def test_task_groups_and_bad_input():
    from lrenv import tasks
    from lrenv.agents import evaluate

    assert set(tasks.TRAIN_TASKS) | set(tasks.HELDOUT_TASKS) == set(tasks.BUILTIN_TASKS)
    assert not set(tasks.TRAIN_TASKS) & set(tasks.HELDOUT_TASKS)
    assert evaluate.resolve_tasks(["heldout", "MNIST1D-CNN-v0", "train"]) == list(tasks.HELDOUT_TASKS) + list(tasks.TRAIN_TASKS)
    with pytest.raises(ValueError, match="disjoint"):
        compare([tiny()], eval_seeds=[1, 2], tune_seeds=[2, 3])
    with pytest.raises(ValueError, match="unknown baseline 'cosinus'"):
        compare([tiny()], baselines=["cosinus"])
    with pytest.raises(ValueError, match="even number"):
        compare([tiny()], trials=3)
    with pytest.raises(ValueError, match="differ from the baselines"):
        compare([tiny()], contenders=[Contender("cosine", policy=StandInPolicy())])
    with pytest.raises(KeyError, match="Unknown-v0"):
        compare(["Unknown-v0"])


def test_a_diverged_run_scores_as_the_env_scores_it():
    task = tiny(epochs=4)
    ref = PolicyRef("baseline", name="constant", params=(("lr", 30.0),))  # the top of the range diverges
    ok = PolicyRef("baseline", name="constant", params=(("lr", 0.1),))
    (bad, good) = run_job(Job(task, lrenv.EnvConfig(device="cpu"), [Slot("constant", ref.params, 1, "eval", ref), Slot("constant", ok.params, 1, "eval", ok)]))
    assert bad.diverged and not good.diverged
    assert bad.score == -2.0 and bad.final_loss == pytest.approx(bad.initial_loss * math.exp(2.0))
    assert bad.accepted == 0.0 and math.isnan(bad.test_loss)
    assert len(good.valid_loss) == 5 and math.isfinite(good.test_loss)
    assert isinstance(make_policy("constant", task.config, lr=1.0), Constant)
