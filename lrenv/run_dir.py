"""The run folder of ``agents.train``: its layout, and every read and write of its files.

One training run owns one folder::

    runs/<tasks>__<algo>__<seed>__<time>/
        config.json          the full resolved config (env settings, algorithm, seed, versions)
        model.zip            the final SB3 model
        normalization.json   observation statistics (:class:`ObsNormalization`), when normalised
        vecnormalize.pkl     the same statistics as SB3 pickles them (for resuming)
        checkpoints/step_<N>/  model.zip, normalization.json, vecnormalize.pkl, state.json and,
                             in the latest one of an off-policy run, replay_buffer.pkl
        episodes.jsonl       every training episode (final losses, LR schedule)
        progress.csv         SB3's training metrics (progress_<k>.csv for the k-th part of a resumed run)
        eval.json            evaluation episodes of the policy and the task's default constant LR
        schedule.png         their LR schedules and loss curves
        wandb/               the W&B run, with ``--track``

Files and checkpoints are written to a temporary name and renamed into place, so a run killed
at any moment (SIGKILL included) leaves complete files, and ``--resume`` or
:func:`lrenv.load_policy` never read half of one. Stable-Baselines3 is imported only by the
methods that save or load a model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` when the block succeeds."""
    # the temporary name keeps the suffix: matplotlib picks the image format from it
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically: a reader (or a crash) never sees half a file."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


@dataclass(frozen=True)
class ObsNormalization:
    """Observation normalisation of SB3's ``VecNormalize``, without the env or a pickle.

    ``normalize(obs) = clip((obs - mean) / sqrt(var + epsilon), -clip_obs, clip_obs)`` as
    float32: exactly ``VecNormalize.normalize_obs`` with frozen statistics. A run folder keeps
    it in ``normalization.json``.
    """

    mean: np.ndarray
    var: np.ndarray
    count: float
    clip_obs: float
    epsilon: float

    @classmethod
    def from_vec_normalize(cls, venv: Any) -> ObsNormalization:
        """The current statistics of a ``VecNormalize``."""
        rms = venv.obs_rms
        return cls(np.array(rms.mean, np.float64), np.array(rms.var, np.float64), float(rms.count), float(venv.clip_obs), float(venv.epsilon))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObsNormalization:
        return cls(
            np.asarray(data["mean"], np.float64),
            np.asarray(data["var"], np.float64),
            float(data["count"]),
            float(data["clip_obs"]),
            float(data["epsilon"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean.tolist(),
            "var": self.var.tolist(),
            "count": self.count,
            "clip_obs": self.clip_obs,
            "epsilon": self.epsilon,
        }

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs)
        return np.clip((obs - self.mean) / np.sqrt(self.var + self.epsilon), -self.clip_obs, self.clip_obs).astype(np.float32)


class RunDir:
    """One run folder (see the module docstring for its layout).

    Args:
        path: The folder; it need not exist yet (see :meth:`create` for a new run).
    """

    CONFIG = "config.json"
    MODEL = "model.zip"
    NORMALIZATION = "normalization.json"
    VECNORMALIZE = "vecnormalize.pkl"
    REPLAY_BUFFER = "replay_buffer.pkl"
    CHECKPOINTS = "checkpoints"
    STATE = "state.json"
    EPISODES = "episodes.jsonl"
    EVAL = "eval.json"
    PLOT = "schedule.png"
    WANDB = "wandb"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, parent: str | os.PathLike[str], tasks: Sequence[str], algo: str, seed: int) -> RunDir:
        """A new, uniquely named run folder ``<tasks>__<algo>__<seed>__<time>`` in ``parent``."""
        label = "+".join(tasks) if len(tasks) <= 3 else f"{len(tasks)}tasks"
        base = f"{label}__{algo}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"
        parent, k = Path(parent), 1
        path = parent / base
        while path.exists():  # two runs started within the same second
            k += 1
            path = parent / f"{base}-{k}"
        path.mkdir(parents=True)
        return cls(path)

    def __repr__(self) -> str:
        return f"RunDir('{self.path}')"

    # -- files -----------------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def model_file(self) -> Path:
        return self.path / self.MODEL

    @property
    def episodes_file(self) -> Path:
        return self.path / self.EPISODES

    @property
    def eval_file(self) -> Path:
        return self.path / self.EVAL

    @property
    def plot_file(self) -> Path:
        return self.path / self.PLOT

    def read_config(self) -> dict[str, Any]:
        return json.loads(self.config_file.read_text())

    def write_config(self, config: dict[str, Any]) -> None:
        write_json(self.config_file, config)

    def write_eval(self, data: dict[str, Any]) -> None:
        write_json(self.eval_file, data)

    def write_plot(self, figure: Any) -> None:
        """Save a matplotlib figure as ``schedule.png``."""
        with atomic_path(self.plot_file) as tmp:
            figure.savefig(tmp)

    def new_progress_csv(self) -> Path:
        """``progress.csv``, or ``progress_<k>.csv`` when a resumed run already wrote the earlier ones."""
        path, k = self.path / "progress.csv", 1
        while path.exists():  # a resumed run must not overwrite the metrics of its first part
            k += 1
            path = self.path / f"progress_{k}.csv"
        return path

    def artifact_files(self) -> list[Path]:
        """What a tracker stores as the policy's artifact: the policy, its config, its evaluation."""
        names = (self.MODEL, self.CONFIG, self.NORMALIZATION, self.VECNORMALIZE, self.EVAL, self.PLOT, self.EPISODES)
        return [self.path / name for name in names]

    # -- checkpoints and the final policy ----------------------------------------------------

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints of the run, oldest first."""
        root = self.path / self.CHECKPOINTS
        return sorted(p for p in root.glob("step_*") if p.is_dir()) if root.is_dir() else []

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    @classmethod
    def checkpoint_timesteps(cls, checkpoint: Path) -> int:
        """The timesteps a checkpoint was saved at."""
        return int(json.loads((checkpoint / cls.STATE).read_text())["timesteps"])

    def save_checkpoint(self, model: Any, venv: Any) -> Path:
        """``checkpoints/step_<N>/``, built in a temporary folder and renamed into place.

        Args:
            model: The SB3 algorithm; an off-policy one saves its replay buffer too.
            venv: The training VecEnv; its ``VecNormalize`` statistics, if any, are saved.

        Returns:
            The checkpoint folder.
        """
        root = self.path / self.CHECKPOINTS
        final = root / f"step_{model.num_timesteps:09d}"
        tmp = root / f".tmp_{final.name}"
        for stale in root.glob(".tmp_*"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
        self._save_policy(model, venv, tmp, replay_buffer=True)
        write_json(tmp / self.STATE, {"timesteps": model.num_timesteps, "time": time.strftime("%Y-%m-%d %H:%M:%S")})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for older in self.checkpoints()[:-1]:  # replay buffers are big: keep the latest only
            (older / self.REPLAY_BUFFER).unlink(missing_ok=True)
        return final

    def save_final(self, model: Any, venv: Any) -> None:
        """The final policy files in the run folder, each moved into place atomically."""
        tmp = self.path / ".tmp_final"
        shutil.rmtree(tmp, ignore_errors=True)
        self._save_policy(model, venv, tmp)
        for f in tmp.iterdir():
            os.replace(f, self.path / f.name)
        tmp.rmdir()

    def load_checkpoint(self, checkpoint: Path, algo_cls: type, venv: Any, device: str) -> tuple[Any, Any]:
        """Restore a checkpoint onto a fresh training VecEnv.

        Args:
            checkpoint: One of :meth:`checkpoints`.
            algo_cls: The run's SB3 algorithm class.
            venv: The training VecEnv, built as for a new run (a ``VecNormalize`` on top, if the
                run normalises observations: it is replaced by the saved one).
            device: Torch device of the agent's networks.

        Returns:
            ``(model, venv)``: the algorithm with its replay buffer, if it saved one, and the
            VecEnv with the saved normalisation statistics.
        """
        from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
        from stable_baselines3.common.vec_env import VecNormalize

        if (checkpoint / self.VECNORMALIZE).is_file():
            venv = VecNormalize.load(str(checkpoint / self.VECNORMALIZE), venv.venv)
        model = algo_cls.load(checkpoint / self.MODEL, env=venv, device=device)
        if (checkpoint / self.REPLAY_BUFFER).is_file() and isinstance(model, OffPolicyAlgorithm):
            model.load_replay_buffer(checkpoint / self.REPLAY_BUFFER)
        return model, venv

    @classmethod
    def _save_policy(cls, model: Any, venv: Any, folder: Path, replay_buffer: bool = False) -> None:
        """model.zip, observation statistics (JSON and SB3 pickle), optionally the replay buffer."""
        from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
        from stable_baselines3.common.vec_env import VecNormalize

        folder.mkdir(parents=True, exist_ok=True)
        model.save(folder / cls.MODEL)
        while venv is not None and not isinstance(venv, VecNormalize):  # VecNormalize may sit under other wrappers
            venv = getattr(venv, "venv", None)
        if venv is not None:
            venv.save(str(folder / cls.VECNORMALIZE))
            write_json(folder / cls.NORMALIZATION, ObsNormalization.from_vec_normalize(venv).to_dict())
        if replay_buffer and isinstance(model, OffPolicyAlgorithm):
            model.save_replay_buffer(folder / cls.REPLAY_BUFFER)

    # -- reading a policy folder (a run folder or one of its checkpoints) ---------------------

    @classmethod
    def find_config(cls, folder: str | os.PathLike[str]) -> Path:
        """The ``config.json`` of the run that ``folder`` (a run folder or a checkpoint folder) belongs to.

        Raises:
            FileNotFoundError: Neither ``folder`` nor the run folder above it has one.
        """
        folder = Path(folder)
        # a checkpoint folder (run/checkpoints/step_N) takes the config of its run
        for candidate in (folder, folder.parent, folder.parent.parent):
            if (candidate / cls.CONFIG).is_file():
                return candidate / cls.CONFIG
        raise FileNotFoundError(f"no {cls.CONFIG} in {folder} or the run folder above it: is it a run folder written by agents.train?")

    @classmethod
    def read_normalization(cls, folder: str | os.PathLike[str]) -> ObsNormalization | None:
        """The observation statistics saved in a policy folder, or ``None`` if it has none."""
        path = Path(folder) / cls.NORMALIZATION
        return ObsNormalization.from_dict(json.loads(path.read_text())) if path.is_file() else None
