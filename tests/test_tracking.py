"""W&B tracking: an offline run holds config, episode metrics and the policy; no server never stops training."""

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import TinyClassifier

import lrenv
from lrenv import tracking
from lrenv.agents import train

pytest.importorskip("wandb")

TASK = "TrackTiny-v0"
WANDB = str(Path(sys.executable).with_name("wandb"))


@pytest.fixture(scope="module", autouse=True)
def tiny_task_name():
    lrenv.register_task(TASK, TinyClassifier)
    yield TASK
    lrenv.unregister_task(TASK)


def train_tracked(tmp_path, *extra):
    return train.main(
        ["--algo", "ppo", "--task", TASK, "--timesteps", "40", "--n-envs", "4", "--eval-episodes", "1", "--runs-dir", str(tmp_path),
         "--no-progress-bar", "--track", "--wandb-project", "lrenv-tests", "--set", "hyperparams.n_steps=5", "hyperparams.batch_size=10",
         "hyperparams.n_epochs=1", *extra]
    )


def inspect(folder: Path, *flags: str):
    out = subprocess.run([WANDB, "leet", "inspect", *flags, "--json", str(folder)], capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out) if "--summary" in flags else [json.loads(line) for line in out.splitlines() if line.strip()]


def test_offline_run_holds_config_episode_metrics_and_policy_artifact(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = train_tracked(tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    assert config["wandb"]["id"] in wandb_run.name  # --resume continues this W&B run

    summary = inspect(wandb_run, "--summary")
    assert summary["state"] == "finished" and summary["project"] == "lrenv-tests"
    assert summary["config"]["algo"] == "ppo" and summary["config"]["tasks"] == [TASK]
    assert summary["config"]["env"]["features"] == "standard" and summary["config"]["hyperparams"]["n_steps"] == 5
    assert summary["summary"][f"eval/{TASK}/policy/final_valid_loss_mean"] > 0

    records = inspect(wandb_run)
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    episodes = [h for h in history if "episode/final_valid_loss" in h]
    assert len(episodes) >= 8  # 40 steps of 4 runs x 5 epochs
    assert all(h["episode/final_valid_loss"] > 0 and 0 <= h["episode/final_valid_accuracy"] <= 1 and h["episode/final_lr"] > 0 for h in episodes)
    assert any("train/value_loss" in h for h in history)  # SB3's own training metrics
    # LR and loss curves: every training episode, and every epoch of the evaluation episodes
    tables = {key.split(".")[0]: h[key] for h in history for key in h if key.endswith(".nrows")}
    assert tables == {"episode/curves": len(episodes), "eval/curves": 2 * 5}
    steps = [h["global_step"] for h in history]
    assert steps == sorted(steps) and steps[-1] == 40
    (artifact,) = [r["artifact"] for r in records if r["type"] == "artifact" and r["artifact"]["type"] == "model"]
    assert artifact["name"] == f"policy-ppo-{TASK}-s0" and artifact["type"] == "model"
    files = {entry["path"] for entry in artifact["manifest"]["contents"]}
    assert {"model.zip", "config.json", "normalization.json", "eval.json", "schedule.png", "episodes.jsonl"} <= files


def test_unreachable_server_falls_back_to_offline_and_training_completes(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef" * 2 + "01234567")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # a closed local port
    with pytest.warns(tracking.TrackingWarning, match="cannot reach http://127.0.0.1:9; tracking this run offline"):
        run_dir = train_tracked(tmp_path)
    assert (run_dir / "model.zip").is_file()
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    assert inspect(wandb_run, "--summary")["state"] == "finished"


@pytest.fixture
def silent_server():
    """A loopback server that accepts connections and never answers: a host that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


def test_no_login_and_a_silent_host_train_on_offline_and_warn_within_30_s(tmp_path, monkeypatch, silent_server):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # not logged in
    monkeypatch.setenv("WANDB_BASE_URL", silent_server)
    started: list[float] = []
    start_wandb = tracking.start_wandb

    def timed(*args, **kwargs):
        t = time.monotonic()
        tracker = start_wandb(*args, **kwargs)
        started.append(time.monotonic() - t)
        return tracker

    monkeypatch.setattr(tracking, "start_wandb", timed)
    with pytest.warns(tracking.TrackingWarning, match="tracking this run offline"):
        run_dir = train_tracked(tmp_path)
    assert started and started[0] < 30, started  # the warning comes when start_wandb gives up on the server
    assert (run_dir / "model.zip").is_file()
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")  # kept to sync later
    assert inspect(wandb_run, "--summary")["state"] == "finished"


class RecordingRun:
    """What Tracker needs of a W&B run; keeps what is logged."""

    def __init__(self) -> None:
        self.logged: list[dict] = []

    def define_metric(self, *args, **kwargs) -> None:
        pass

    def log(self, values: dict) -> None:
        self.logged.append(values)

    def finish(self, exit_code: int = 0) -> None:
        pass


def test_held_values_reach_wandb_only_when_committed():
    run = RecordingRun()
    tracker, sent = tracking.Tracker(run), run.logged
    tracker.hold()
    tracker.log({"episode/return": 1.0}, 5)
    assert sent == []  # a kill now loses nothing a resume would not train again
    tracker.commit()
    tracker.log({"episode/return": 2.0}, 9)
    assert [v["global_step"] for v in sent] == [5]
    tracker.finish()
    assert [v["global_step"] for v in sent] == [5, 9]


def test_failed_online_init_falls_back_to_offline_within_the_timeout(tmp_path, monkeypatch):
    # the server answers the probe but wandb.init fails: still offline, no hang
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef" * 2 + "01234567")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setattr(tracking, "server_reachable", lambda timeout=3.0: True)
    with pytest.warns(tracking.TrackingWarning, match="starting an online run failed"):
        tracker = tracking.start_wandb({"a": 1}, project="lrenv-tests", folder=tmp_path, init_timeout=2)
    try:
        assert tracker.mode == "offline"
        tracker.log({"episode/final_valid_loss": 1.0}, step=1)
    finally:
        tracker.finish()


def test_mode_choice(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert tracking.choose_mode() == "offline"  # not logged in
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert tracking.choose_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.choose_mode() == "disabled"


def test_importing_lrenv_does_not_import_wandb():
    code = "import sys, lrenv, lrenv.tracking; assert 'wandb' not in sys.modules, 'wandb imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
