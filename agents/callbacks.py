"""SB3 callbacks of ``agents.train``: record every training episode, save periodic checkpoints."""

from __future__ import annotations

import json
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
            record = {
                "timesteps": self.num_timesteps,
                "task": info["task"],
                "run_seed": info["run_seed"],
                "return": float(info["episode"]["r"]) if "episode" in info else None,
                "epochs": info["epoch"],
                **episode_summary(info, self._curves[k]),
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
