"""SB3 callbacks of ``agents.train``: record every training episode, save periodic checkpoints."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from lrenv.run_dir import RunDir


def episode_summary(last_info: dict[str, Any], curve: list[tuple[float, float, float]]) -> dict[str, Any]:
    """Final numbers and the (lr, train loss, valid loss) curves of one finished episode."""
    lrs, train, valid = (list(c) for c in zip(*curve))
    return {
        "diverged": last_info["diverged"],
        "final_valid_loss": last_info["valid_loss"],
        "final_valid_accuracy": last_info.get("valid_accuracy"),
        "lr": lrs,
        "train_loss": train,
        "valid_loss": valid,
    }


class EpisodeRecorder(BaseCallback):
    """Writes every finished training episode (final losses, LR schedule) to episodes.jsonl and W&B.

    Args:
        path: The JSON-lines file, appended to (a resumed run continues it).
        tracker: A :class:`lrenv.tracking.Tracker`, or ``None``.
    """

    def __init__(self, path: Path, tracker: Any = None) -> None:
        super().__init__()
        self.path = path
        self.tracker = tracker
        self._curves: list[list[tuple[float, float, float]]] = []

    def _on_training_start(self) -> None:
        self._curves = [[] for _ in range(self.training_env.num_envs)]
        self._file = self.path.open("a")

    def _on_step(self) -> bool:
        infos, dones = self.locals["infos"], self.locals["dones"]
        wrote = False
        for k, info in enumerate(infos):
            self._curves[k].append((info["lr"], info["train_loss"], info["valid_loss"]))
            if not dones[k]:
                continue
            if info.get("lost"):  # its env's actor died mid-episode: no episode to record
                self._curves[k] = []
                continue
            record = {
                "timesteps": self.num_timesteps,
                "task": info["task"],
                "run_seed": info["run_seed"],
                "return": float(info["episode"]["r"]) if "episode" in info else None,
                "epochs": info["epoch"],
                # ARS resets between candidates: an unfinished episode's epochs are left at the front
                **episode_summary(info, self._curves[k][-info["epoch"] :]),
            }
            self._curves[k] = []
            self._file.write(json.dumps(record) + "\n")
            wrote = True
            if self.tracker is not None:
                self._track(record)
        if wrote:
            self._file.flush()
        return True

    def _track(self, record: dict[str, Any]) -> None:
        values = {
            "episode/final_valid_loss": record["final_valid_loss"],
            "episode/return": record["return"],
            "episode/epochs": record["epochs"],
            "episode/diverged": int(record["diverged"]),
            "episode/final_lr": record["lr"][-1],
            "episode/mean_log10_lr": float(np.mean(np.log10(record["lr"]))),
            "episode/final_valid_accuracy": record["final_valid_accuracy"],
        }
        self.tracker.log({k: v for k, v in values.items() if v is not None}, self.num_timesteps)

    def _on_training_end(self) -> None:
        self._file.close()


class CheckpointEvery(BaseCallback):
    """Saves a checkpoint (:meth:`lrenv.run_dir.RunDir.save_checkpoint`) every ``freq`` timesteps."""

    def __init__(self, run: RunDir, freq: int, tracker: Any = None) -> None:
        super().__init__()
        self.run, self.freq, self.tracker = run, freq, tracker

    def _on_training_start(self) -> None:
        self._last = self.num_timesteps

    def _on_step(self) -> bool:
        if self.num_timesteps - self._last >= self.freq:
            self._last = self.num_timesteps
            self.run.save_checkpoint(self.model, self.training_env)
            if self.tracker is not None:
                self.tracker.log({"checkpoint/timesteps": self.num_timesteps}, self.num_timesteps)
                self.tracker.commit()  # what a resume from this checkpoint will not train again
        return True


def one_episode_per_env(model: Any, venv: Any, on_step: Callable[[list[dict[str, Any]], np.ndarray], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return and length of each env's first deterministic episode after a reset.

    Envs that finish early keep stepping (a VecEnv steps all its envs) until the last one
    finishes; those later steps are not counted. ``on_step(infos, dones)`` sees every step.
    """
    obs = venv.reset()
    returns, lengths = np.zeros(venv.num_envs), np.zeros(venv.num_envs, dtype=np.int64)
    finished = np.zeros(venv.num_envs, dtype=bool)
    while not finished.all():
        actions, _ = model.predict(obs, deterministic=True)
        obs, rewards, dones, infos = venv.step(actions)
        returns[~finished] += rewards[~finished]
        lengths[~finished] += 1
        finished |= dones
        if on_step is not None:
            on_step(infos, dones)
    return returns, lengths


def validation_returns(model: Any, venv: Any, seed: int) -> np.ndarray:
    """Return of one deterministic episode per env of ``venv``, started from seeds ``seed + k``."""
    venv.seed(seed)
    return one_episode_per_env(model, venv)[0]


class KeepBest(BaseCallback):
    """Every ``freq`` timesteps, scores the policy on fixed validation episodes and keeps the best (SB3's ``EvalCallback`` pattern).

    The validation episodes are the same at every evaluation (seeds ``seed + k``) and far from
    the training and final-evaluation seeds, so scores are comparable over the run. The best
    policy goes to ``best/`` (:meth:`lrenv.run_dir.RunDir.save_best`); every score is appended
    to ``validation.jsonl``.

    Args:
        run: The run folder.
        venv: The validation VecEnv (one episode per env), built like the training one.
        labels: One label per env of ``venv`` (e.g. its task variant), for per-label means.
        freq: Timesteps between evaluations.
        seed: Seed of the validation episodes.
        tracker: A :class:`lrenv.tracking.Tracker`, or ``None``.
    """

    def __init__(self, run: RunDir, venv: Any, labels: list[str], freq: int, seed: int, tracker: Any = None) -> None:
        super().__init__()
        self.run, self.venv, self.labels, self.freq, self.seed, self.tracker = run, venv, labels, freq, seed, tracker
        self.best = -np.inf
        self._last = -np.inf

    def _on_training_start(self) -> None:
        best = self.run.best_folder / "best.json"
        if best.is_file():  # a resumed run keeps the best it had, and its policy was scored when it stopped
            self.best = float(json.loads(best.read_text())["mean_return"])
            self._last = self.num_timesteps

    def _on_step(self) -> bool:
        if self.num_timesteps - self._last >= self.freq:
            self._last = self.num_timesteps
            self.evaluate()
        return True

    def _on_training_end(self) -> None:
        if self.num_timesteps > self._last:
            self.evaluate()

    def evaluate(self) -> None:
        self._sync_normalization()
        returns = validation_returns(self.model, self.venv, self.seed)
        by_label: dict[str, list[float]] = {}
        for label, value in zip(self.labels, returns):
            by_label.setdefault(label, []).append(float(value))
        record = {
            "timesteps": self.num_timesteps,
            "mean_return": float(returns.mean()),
            "returns": {label: float(np.mean(v)) for label, v in by_label.items()},
        }
        self.run.append_validation(record)
        if record["mean_return"] > self.best:
            self.best = record["mean_return"]
            self.run.save_best(self.model, self.training_env, record)
        if self.tracker is not None:
            self.tracker.log({"validation/mean_return": record["mean_return"], "validation/best": self.best}, self.num_timesteps)

    def _sync_normalization(self) -> None:
        from stable_baselines3.common.vec_env import VecNormalize, unwrap_vec_normalize

        train = unwrap_vec_normalize(self.training_env)
        if train is not None and isinstance(self.venv, VecNormalize):
            self.venv.obs_rms = train.obs_rms.copy()
