"""Processes that run at the same time: separate run folders, whole cache entries."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from lrenv.evaluation.cache import EpisodeCache
from lrenv.evaluation.runner import Episode
from lrenv.run_dir import RunDir

ROOT = Path(__file__).resolve().parents[1]


def test_runs_created_in_the_same_second_get_separate_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda *_: "20260101-120000")  # every run starts "in the same second"
    made: list[Path] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        made.append(RunDir.create(tmp_path, ["Digits-MLP-v0"], "ppo", 0).path)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8 and sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in made)
    assert {p.name for p in made} == {"Digits-MLP-v0__ppo__0__20260101-120000"} | {f"Digits-MLP-v0__ppo__0__20260101-120000-{k}" for k in range(2, 9)}


def test_two_training_processes_with_the_same_arguments_write_separate_run_folders(tmp_path):
    # both write the tuned-baseline reference into one evaluation cache at once, apart from the user's
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LRENV_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "agents.train", "--algo", "ppo", "--task", "Digits-MLP-v0", "--timesteps", "8", "--n-envs", "2",
           "--eval-episodes", "0", "--runs-dir", str(tmp_path), "--no-progress-bar", "--set", "env.task_config={epochs: 2}",
           "hyperparams.n_steps=4", "hyperparams.batch_size=8", "hyperparams.n_epochs=1"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    runs = sorted(p for p in tmp_path.iterdir() if p.name != "cache")
    assert len(runs) == 2
    for run in runs:
        assert (run / "model.zip").is_file() and json.loads((run / "config.json").read_text())["run_dir"] == str(run)
        assert json.loads((run / "reference_returns.json").read_text())["populations"][0]["best"]


def _episode(k: int, n: int) -> Episode:
    return Episode(
        task="T", method="m", params={"lr": 0.1}, role="eval", seed=k, run_seed=k, epochs=n, lrs=[0.1] * n, valid_loss=[1.0] * (n + 1),
        train_loss=[1.0] * (n + 1), valid_accuracy=[], diverged=False, test_loss=1.0, test_accuracy=float("nan"),
        divergence_penalty=2.0, target=None,
    )


def _write_repeatedly(folder: str, rounds: int) -> None:
    cache = EpisodeCache(folder)
    episodes = [_episode(k, 400) for k in range(64)]  # about 1 MB: a write takes a while
    for _ in range(rounds):
        cache.store("ab" + "0" * 62, episodes)


def test_concurrent_writers_never_expose_a_half_written_cache_entry(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_write_repeatedly, args=(str(tmp_path), 30)) for _ in range(2)]
    for w in writers:
        w.start()
    entry, reads = tmp_path / "ab" / ("ab" + "0" * 62 + ".json"), []
    while any(w.is_alive() for w in writers):
        try:
            text = entry.read_text()
        except FileNotFoundError:
            continue
        reads.append(len(json.loads(text)))  # a half-written entry would not parse
    assert EpisodeCache(tmp_path).load("ab" + "0" * 62) is not None
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert reads and set(reads) == {64}  # every read saw a whole entry
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file is left behind


def test_a_pool_closes_although_its_progress_reports_were_never_read():
    from lrenv.evaluation.executor import draining

    ctx = multiprocessing.get_context("spawn")
    reports = ctx.Queue()
    worker = ctx.Process(target=reports.put, args=(b"x" * 300_000,))  # more than a pipe holds
    worker.start()
    worker.join(timeout=3)
    assert worker.is_alive()  # the trap: it waits to flush its report into a pipe nobody reads
    with draining(reports):
        worker.join(timeout=60)
    assert worker.exitcode == 0
