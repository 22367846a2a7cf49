"""agents.train: every algorithm writes a complete run folder; runs survive SIGKILL; bad input is explained."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TinyClassifier

import lrenv
from lrenv.agents import train
from lrenv.agents.config import CONFIG_DIR, reference_baselines
from lrenv.baselines import BASELINES
from lrenv.run_dir import RunDir

ROOT = Path(__file__).resolve().parents[1]
TASK = "TrainTiny-v0"


@pytest.fixture(scope="module")
def tiny_task_name():
    lrenv.register_task(TASK, TinyClassifier)
    yield TASK
    lrenv.unregister_task(TASK)


#: Tests that do not look at the tuned-baseline reference skip it: all baselines would take seconds.
NO_REFERENCE = "reference_baselines=[]"
ALGO_ARGS = {
    "ppo": ["hyperparams.n_steps=5", "hyperparams.batch_size=10", "hyperparams.n_epochs=2", NO_REFERENCE],
    "a2c": ["hyperparams.n_steps=5", NO_REFERENCE],
    "sac": ["hyperparams.learning_starts=20", "hyperparams.batch_size=16", NO_REFERENCE],
    "td3": ["hyperparams.learning_starts=20", "hyperparams.batch_size=16", NO_REFERENCE],
}


@pytest.mark.parametrize("algo", sorted(ALGO_ARGS))
def test_each_algorithm_writes_a_complete_run_folder(algo, tiny_task_name, tmp_path, capsys):
    run_dir = train.main(
        ["--algo", algo, "--task", tiny_task_name, "--timesteps", "40", "--n-envs", "2", "--checkpoint-freq", "20",
         "--eval-episodes", "1", "--runs-dir", str(tmp_path), "--no-progress-bar", "--set", *ALGO_ARGS[algo]]
    )
    out = capsys.readouterr().out
    assert f"Run folder: {run_dir}" in out and "Eval TrainTiny-v0 (1 fresh seed)" in out
    assert run_dir.parent == tmp_path and run_dir.name.startswith(f"{tiny_task_name}__{algo}__0__")
    for name in ("config.json", "model.zip", "normalization.json", "vecnormalize.pkl", "episodes.jsonl", "eval.json", "schedule.png", "progress.csv"):
        assert (run_dir / name).is_file(), name
    # reference_baselines: [] skips the tuned baselines; learning.png is drawn without them
    assert (run_dir / "learning.png").is_file() and not (run_dir / train.REFERENCE_FILE).exists()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algo"] == algo and config["tasks"] == [tiny_task_name] and config["n_envs"] == 2
    assert config["vec_env"] == "batched" and config["env"]["features"] == "standard"
    assert config["task_configs"][tiny_task_name]["epochs"] == 5
    assert {"lrenv", "torch", "stable_baselines3", "gymnasium", "python"} <= set(config["versions"])
    assert config["hyperparams"]["learning_starts" if algo in ("sac", "td3") else "n_steps"] in (5, 20)  # --set applied
    steps = [int(p.name.split("_")[1]) for p in RunDir(run_dir).checkpoints()]
    assert len(steps) >= 2 and steps == sorted(steps) and steps[-1] >= 40
    off_policy = algo in ("sac", "td3")
    assert (RunDir(run_dir).checkpoints()[-1] / "replay_buffer.pkl").is_file() == off_policy
    assert not (RunDir(run_dir).checkpoints()[0] / "replay_buffer.pkl").exists()  # only the latest keeps it
    episodes = [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]
    assert episodes and all(len(e["lr"]) == e["epochs"] for e in episodes)
    results = json.loads((run_dir / "eval.json").read_text())["tasks"][tiny_task_name]
    assert results["policy"]["episodes"] == 1 and results["default_constant"]["final_valid_loss_mean"] > 0
    policy = lrenv.load_policy(run_dir)
    assert policy.predict(np.zeros((1, 8), np.float32)).shape == (1, 1)
    # lrenv's pickle-free policy files beside SB3's zip, in the run folder and every checkpoint; they act as the zip does
    for folder in (run_dir, *RunDir(run_dir).checkpoints()):
        assert (folder / "policy.json").is_file() and (folder / "policy.safetensors").is_file() and (folder / "model.zip").is_file()
    spec = json.loads((run_dir / "policy.json").read_text())
    assert spec["format"] == 1 and spec["algo"] == algo and spec["timesteps"] == policy.timesteps >= 40
    sb3 = lrenv.policy.algorithm_class(algo).load(run_dir / "model.zip", device="cpu")
    obs = policy.normalize(np.random.default_rng(0).normal(size=(32, 8)))
    np.testing.assert_array_equal(policy.model.predict(obs, deterministic=True)[0], sb3.predict(obs, deterministic=True)[0])


def test_task_list_trains_one_policy_on_a_dummy_vec_env(tiny_task_name, tmp_path):
    run_dir = train.main(
        ["--algo", "ppo", "--task", tiny_task_name, "Digits-MLP-v0", "--timesteps", "20", "--n-envs", "2", "--eval-episodes", "1",
         "--runs-dir", str(tmp_path), "--no-progress-bar", "--set", "env.task_config={epochs: 2}", *ALGO_ARGS["ppo"]]
    )
    config = json.loads((run_dir / "config.json").read_text())
    assert config["vec_env"] == "dummy" and config["tasks"] == [tiny_task_name, "Digits-MLP-v0"]
    assert set(json.loads((run_dir / "eval.json").read_text())["tasks"]) == {tiny_task_name, "Digits-MLP-v0"}
    assert run_dir.name.startswith(f"{tiny_task_name}+Digits-MLP-v0__ppo__")


def test_config_file_and_overrides(tiny_task_name, tmp_path):
    config_file = tmp_path / "mine.yaml"
    config_file.write_text("algo: a2c\n" + (CONFIG_DIR / "a2c.yaml").read_text().replace("n_envs: 16", "n_envs: 3"))
    run_dir = train.main(
        ["--config", str(config_file), "--task", tiny_task_name, "--timesteps", "15", "--eval-episodes", "0",
         "--runs-dir", str(tmp_path), "--no-progress-bar", "--set", "hyperparams.n_steps=5", "hyperparams.learning_rate=3e-4",
         "env.features=minimal", NO_REFERENCE]
    )
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algo"] == "a2c"  # named by the file
    assert config["n_envs"] == 3 and config["hyperparams"]["learning_rate"] == 3e-4 and config["env"]["features"] == "minimal"
    assert lrenv.load_policy(run_dir).predict(np.zeros((2, 2), np.float32)).shape == (2, 1)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--algo", "dqn"], "unknown algorithm 'dqn'; choose one of ppo, a2c, sac, td3"),
        (["--task", "Nope-v0"], "unknown task 'Nope-v0'; registered tasks: "),
        (["--set", "hyperparams.n_stepz=4"], "unknown hyperparameter(s) n_stepz for ppo; allowed: learning_rate, n_steps"),
        (["--set", "nope=4"], "unknown config key 'nope' in --set nope=4; allowed: algo, timesteps"),
        (["--set", "env.feature=minimal"], "env section of the config got unknown keyword argument(s) feature; allowed: features, "),
        (["--set", "timesteps"], "--set expects KEY=VALUE"),
        (["--set", "reference_baselines=[cosine, nope]"], "unknown reference baseline(s) 'nope'; allowed: constant, step, exponential, cosine,"),
        (["--set", "reference_baselines=cosine"], "reference_baselines must be null (all) or a list of baseline names ([] for none), got 'cosine'"),
        (["--resume", "/nonexistent/run"], "no config.json there"),
    ],
)
def test_bad_input_is_a_clear_error(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train.main([*argv, "--runs-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # no run folder for a run that never started


def _progress_steps(path: Path) -> list[int]:
    with path.open() as f:
        return [int(row["time/total_timesteps"]) for row in csv.DictReader(f)]


def _episode_steps(run_dir: Path) -> list[int]:
    path = run_dir / "episodes.jsonl"
    return [json.loads(line)["timesteps"] for line in path.read_text().splitlines() if line.endswith("}")] if path.is_file() else []


def test_resume_after_sigkill_continues_from_the_last_checkpoint_and_logs_each_episode_once(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "agents.train", "--algo", "ppo", "--task", "Digits-MLP-v0", "--timesteps", "600",
           "--n-envs", "4", "--checkpoint-freq", "100", "--eval-episodes", "0", "--runs-dir", str(tmp_path), "--no-progress-bar",
           "--set", "env.task_config={epochs: 3}", "hyperparams.n_steps=6", "hyperparams.batch_size=12", "hyperparams.n_epochs=2", NO_REFERENCE]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # kill once episodes and metrics past the latest checkpoint have been logged
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            found = list(tmp_path.glob("*/checkpoints/step_*"))
            if found:
                run_dir, last = found[0].parents[1], max(int(p.name.split("_")[1]) for p in found)
                progress = _progress_steps(run_dir / "progress.csv") if (run_dir / "progress.csv").is_file() else []
                if min(max(_episode_steps(run_dir), default=0), max(progress, default=0)) > last:
                    break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    (run_dir,) = tmp_path.iterdir()
    assert not (run_dir / "model.zip").exists()  # killed before the end
    killed_at = int(RunDir(run_dir).checkpoints()[-1].name.split("_")[1])
    assert 100 <= killed_at < 600
    logged_before = _episode_steps(run_dir)
    assert max(logged_before) > killed_at and max(_progress_steps(run_dir / "progress.csv")) > killed_at  # trained again after the resume
    killed_part = {(e["timesteps"], e["run_seed"]) for e in map(json.loads, (run_dir / "episodes.jsonl").read_text().splitlines())}

    resumed = train.main(["--resume", str(run_dir), "--no-progress-bar"])
    assert resumed == run_dir
    policy = lrenv.load_policy(run_dir)
    assert policy.timesteps >= 600 and policy.predict(np.zeros((1, 8), np.float32)).shape == (1, 1)
    # timesteps kept counting up from the checkpoint; the first part's metrics were kept up to it
    before, after = _progress_steps(run_dir / "progress.csv"), _progress_steps(run_dir / "progress_2.csv")
    assert after and after[0] > killed_at and before + after == sorted(set(before + after))
    assert not before or before[-1] <= killed_at
    # each training episode once: the log holds the first part up to the checkpoint, then the resumed part
    logged = _episode_steps(run_dir)
    assert logged == sorted(logged) and logged[: len([s for s in logged_before if s <= killed_at])] == [s for s in logged_before if s <= killed_at]
    assert [s for s in logged if s > killed_at] and all(s <= 600 + 12 for s in logged)
    final = {(e["timesteps"], e["run_seed"]) for e in map(json.loads, (run_dir / "episodes.jsonl").read_text().splitlines())}
    assert not {e for e in killed_part if e[0] > killed_at} & final  # the episodes the resume trained again are gone
    steps = [int(p.name.split("_")[1]) for p in RunDir(run_dir).checkpoints()]
    assert steps[0] <= killed_at < steps[-1] and steps[-1] >= 600


@pytest.mark.slow
def test_ppo_defaults_beat_the_default_constant_lr_on_mnist1d(tmp_path):
    """Learning works: PPO with the shipped defaults (about 15 minutes on 2 CPU cores) beats the task's
    default constant LR on 10 fresh seeds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "agents.train", "--algo", "ppo", "--task", "MNIST1D-MLP-v0", "--runs-dir", str(tmp_path), "--no-progress-bar"]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=3600)
    (run_dir,) = tmp_path.iterdir()
    results = json.loads((run_dir / "eval.json").read_text())["tasks"]["MNIST1D-MLP-v0"]
    policy, constant = results["policy"], results["default_constant"]
    assert policy["episodes"] >= 10 and policy["diverged"] == 0
    assert policy["final_valid_loss_mean"] < constant["final_valid_loss_mean"]


def test_a_training_distribution_keeps_the_policy_best_on_validation(tiny_task_name, tmp_path, capsys):
    """The default policy's recipe in small: ARS over two task variants, paired seeds, the best validated policy kept."""
    argv = ["--config", str(CONFIG_DIR / "default.yaml"), "--timesteps", "180", "--eval-episodes", "1", "--runs-dir", str(tmp_path),
            "--no-progress-bar", "--set", "eval_freq=60", "hyperparams.n_delta=2", "hyperparams.n_top=2", "reference_baselines=[cosine, constant]",
            f"populations=[{{task: {tiny_task_name}, n_envs: 2}}, {{task: {tiny_task_name}, task_config: {{epochs: 3, optimizer: adam, default_lr: 0.01}}}}]"]
    run_dir = train.main(argv)
    out = capsys.readouterr().out
    again = train.main(argv)  # the same seed gives the same policy, bit for bit
    assert (again / "policy.safetensors").read_bytes() == (run_dir / "policy.safetensors").read_bytes()
    assert (again / "validation.jsonl").read_text() == (run_dir / "validation.jsonl").read_text()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["n_envs"] == 3 and config["tasks"] == [tiny_task_name]
    assert config["populations"][1]["task_config"] == {"epochs": 3, "optimizer": "adam", "default_lr": 0.01}
    validation = [json.loads(line) for line in (run_dir / "validation.jsonl").read_text().splitlines()]
    assert len(validation) >= 3 and set(validation[0]["returns"]) == {tiny_task_name, f"{tiny_task_name}[epochs=3,optimizer=adam]"}
    best = max(validation, key=lambda r: r["mean_return"])
    assert json.loads((run_dir / "best" / "best.json").read_text()) == best
    assert f"Kept the policy of timestep {best['timesteps']}" in out
    # the run's policy files are the best one's; model.zip stays the last, for resuming
    for name in ("policy.json", "policy.safetensors", "normalization.json"):
        assert (run_dir / name).read_bytes() == (run_dir / "best" / name).read_bytes()
    assert (run_dir / "learning.png").stat().st_size > 0
    # the tuned baselines on each population's env, labelled as validation labels them, drawn beside its curve
    reference = json.loads((run_dir / train.REFERENCE_FILE).read_text())
    assert [p["label"] for p in reference["populations"]] == list(validation[0]["returns"]) and reference["by_task"] == {tiny_task_name: 0}
    assert reference["populations"][1]["task_config"] == config["populations"][1]["task_config"]
    for population in reference["populations"]:
        assert list(population["returns"]) == ["constant", "cosine"] and all(np.isfinite(list(population["returns"].values())))
        assert population["best"] in ("constant", "cosine") and f"Tuned baselines on {population['label']} (mean return on 10 evaluation seeds): " in out
    # the two variants' budgets (5 and 3 epochs) differ: so do their tuned baselines' returns
    assert reference["populations"][0]["returns"] != reference["populations"][1]["returns"]
    legend = [t.get_text() for t in train.plot_learning(RunDir(run_dir), "t").axes[1].get_legend().get_texts()]
    cosine = reference["populations"][1]["returns"]["cosine"]
    assert f"{tiny_task_name}[epochs=3,optimizer=adam]: tuned cosine{' ★' if reference['populations'][1]['best'] == 'cosine' else ''} {cosine:.2f}" in legend
    episodes = [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]
    # every record holds its own episode's epochs only (candidates reset the envs mid-episode); budgets 5 and 3
    assert all(e["epochs"] == len(e["lr"]) <= 5 for e in episodes) and {3, 5} <= {len(e["lr"]) for e in episodes if not e["diverged"]}
    policy = lrenv.load_policy(run_dir)
    assert policy.env_config.action_mode == "multiplier" and policy.env_config.features == "relative"


def test_learning_is_plotted_beside_the_tuned_baselines_on_the_same_env(tmp_path, reference_cache, capsys):
    """reference_returns.json: the harness's tuned baselines on the run's env, through the evaluation cache agents.evaluate uses."""
    options = "--algo ppo --task Digits-MLP-v0 --timesteps 12 --n-envs 2 --eval-episodes 0 --no-progress-bar"
    hyperparams = ["hyperparams.n_steps=6", "hyperparams.batch_size=12", "hyperparams.n_epochs=1"]
    run_dir = train.main(
        [*options.split(), "--runs-dir", str(tmp_path), "--set", "env.task_config={epochs: 3}", *hyperparams, "reference_baselines=[cosine, constant]"]
    )
    out = capsys.readouterr().out
    assert json.loads((run_dir / "config.json").read_text())["reference_baselines"] == ["constant", "cosine"]  # the baselines' own order
    reference = json.loads((run_dir / train.REFERENCE_FILE).read_text())
    (population,) = reference["populations"]
    assert population["label"] == population["task"] == "Digits-MLP-v0" and population["task_config"] == {"epochs": 3}
    assert reference["by_task"] == {"Digits-MLP-v0": 0} and reference["device"] == "cpu" and reference["trials"] == 6
    returns = population["returns"]
    assert list(returns) == ["constant", "cosine"] and all(0 < r < 5 for r in returns.values())  # log(L0/LT) of a few epochs
    best = population["best"]
    (line,) = [line for line in out.splitlines() if line.startswith("Tuned baselines on Digits-MLP-v0 (mean return on 10 evaluation seeds): ")]
    assert best in returns and f"★ {best} {returns[best]:.3f}" in line and f"{returns['constant']:.3f}" in line
    assert list(reference_cache.glob("*/*.json"))  # shared with agents.evaluate through its cache
    assert (run_dir / "learning.png").stat().st_size > 0
    legend = [t.get_text() for t in train.plot_learning(RunDir(run_dir), "t").axes[0].get_legend().get_texts()]
    assert f"Digits-MLP-v0: tuned {best} ★ {returns[best]:.2f}" in legend
    assert ("Digits-MLP-v0: tuned cosine" + (" ★" if best == "cosine" else "") + f" {returns['cosine']:.2f}") in legend
    # W&B gets the numbers in the run's summary
    tracker = SummaryTracker()
    train.finish_tracking(tracker, json.loads((run_dir / "config.json").read_text()), RunDir(run_dir), {}, 12, reference)
    expected = {"reference/Digits-MLP-v0/constant": returns["constant"], "reference/Digits-MLP-v0/cosine": returns["cosine"]}
    assert tracker.summaries == [{**expected, "reference/Digits-MLP-v0/best": best}]


class SummaryTracker:
    """A :class:`lrenv.tracking.Tracker` that keeps what goes to the summary and drops the rest."""

    def __init__(self) -> None:
        self.summaries = []

    def summary(self, values):
        self.summaries.append(values)

    def log(self, *args, **kwargs): ...

    table = image = log_artifact = log


def test_a_reward_other_than_log_progress_has_no_reference(tiny_task_name, tmp_path, capsys):
    options = f"--algo ppo --task {tiny_task_name} --timesteps 10 --n-envs 2 --eval-episodes 0 --no-progress-bar"
    run_dir = train.main([*options.split(), "--runs-dir", str(tmp_path), "--set", "env.reward=final_loss", *ALGO_ARGS["ppo"][:-1]])
    assert "No tuned-baseline reference: baselines are scored in log_progress returns, this run's reward is final_loss" in capsys.readouterr().out
    assert not (run_dir / train.REFERENCE_FILE).exists() and (run_dir / "learning.png").is_file()


def test_configs_without_reference_baselines_compare_with_all_of_them():
    """Runs written before the key existed (their --resume included) and a null value get every baseline, in their own order."""
    assert reference_baselines({}) == reference_baselines({"reference_baselines": None}) == list(BASELINES)
    assert reference_baselines({"reference_baselines": ["wsd", "cosine"]}) == ["cosine", "wsd"]
