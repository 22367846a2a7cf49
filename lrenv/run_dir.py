"""The run folder of ``agents.train``: its layout, and every read and write of its files.

One training run owns one folder::

    runs/<tasks>__<algo>__<seed>__<time>/
        config.json          the full resolved config (env settings, algorithm, seed, versions)
        policy.json          the run's policy network: classes by name, settings, spaces (:mod:`lrenv.policy`);
                             with validation (``eval_freq``) the best validated one, else the last
        policy.safetensors   its weights (plain tensors: loading runs no code)
        model.zip            the final SB3 model (pickles: for ``--resume`` and SB3 users)
        normalization.json   observation statistics (:class:`ObsNormalization`), when normalised
        vecnormalize.pkl     the same statistics as SB3 pickles them (for resuming)
        checkpoints/step_<N>/  policy.json, policy.safetensors, model.zip, normalization.json,
                             vecnormalize.pkl, state.json and, in the latest one of an
                             off-policy run, replay_buffer.pkl
        episodes.jsonl       every training episode (final losses, LR schedule)
        best/                the best policy on the validation episodes so far, with best.json (its scores)
        validation.jsonl     every validation score (timesteps, mean return, return per task variant)
        learning.png         training return per task and validation return per variant, against timesteps
        progress.csv         SB3's training metrics (progress_<k>.csv for the k-th part of a resumed run)
        eval.json            evaluation episodes of the policy and the task's default constant LR
        schedule.png         their LR schedules and loss curves
        wandb/               the W&B run, with ``--track``

Files and checkpoints are written to a temporary name and renamed into place, so a run killed
at any moment (SIGKILL included) leaves complete files, and ``--resume`` or
:func:`lrenv.load_policy` never read half of one. Reading a file that is missing a key,
damaged or of an unknown format raises :class:`PolicyFileError` (a ``ValueError``) naming the
file and the problem; a missing file, ``FileNotFoundError``. Stable-Baselines3 is imported only
by the methods that save or load a model.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The column of SB3's progress CSV that says at which agent timestep a row was logged.
TIMESTEPS_COLUMN = "time/total_timesteps"


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


class PolicyFileError(ValueError):
    """A file of a run folder is damaged, incomplete or of a format this lrenv cannot read.

    The message names the file and the problem. A missing file is a ``FileNotFoundError``.
    """


def read_json(path: Path) -> Any:
    """The JSON value in ``path``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        PolicyFileError: It is empty, not UTF-8 text or not valid JSON.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise PolicyFileError(f"{path} is not a JSON text file ({exc}): it is damaged or not the file agents.train wrote") from exc
    if not text.strip():
        raise PolicyFileError(f"{path} is empty: it was truncated or damaged after it was written")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyFileError(f"{path} is not valid JSON ({exc}): it is truncated or damaged") from exc


def require_keys(data: Any, path: Path, keys: Iterable[str], what: str) -> dict[str, Any]:
    """``data`` if it is a JSON object holding ``keys``; a :class:`PolicyFileError` naming ``path`` otherwise."""
    if not isinstance(data, dict):
        raise PolicyFileError(f"{path} must hold a JSON object (a {what}), got {type(data).__name__}")
    missing = [key for key in keys if key not in data]
    if missing:
        raise PolicyFileError(f"{path} lacks {', '.join(repr(k) for k in missing)}: it is not a complete {what}{written_by(data)}")
    return data


def written_by(config: dict[str, Any]) -> str:
    """`` (the run was written by lrenv X; this is lrenv Y)`` when a config's lrenv version differs from this one, else ``""``."""
    import lrenv  # lrenv imports this module: its version is known only once the import is done

    versions = config.get("versions")
    found = versions.get("lrenv") if isinstance(versions, dict) else config.get("lrenv")
    if not isinstance(found, str) or found == lrenv.__version__:
        return ""
    return f" (the run was written by lrenv {found}; this is lrenv {lrenv.__version__})"


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
    POLICY = "policy.json"
    WEIGHTS = "policy.safetensors"
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
    BEST = "best"
    VALIDATION = "validation.jsonl"
    LEARNING_PLOT = "learning.png"
    #: config.json keys that loading a policy needs, and all that ``agents.train --resume`` needs.
    POLICY_CONFIG_KEYS = ("algo", "tasks", "task_configs", "env", "seed")
    RESUME_CONFIG_KEYS = (*POLICY_CONFIG_KEYS, "name", "timesteps", "n_envs", "vec_env", "normalize_obs", "clip_obs", "checkpoint_freq",
                          "eval_episodes", "policy", "hyperparams")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, parent: str | os.PathLike[str], tasks: Sequence[str], algo: str, seed: int) -> RunDir:
        """A new, uniquely named run folder ``<tasks>__<algo>__<seed>__<time>`` in ``parent``."""
        label = "+".join(tasks) if len(tasks) <= 3 else f"{len(tasks)}tasks"
        base = f"{label}__{algo}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"
        parent = Path(parent)
        parent.mkdir(parents=True, exist_ok=True)
        for k in itertools.count(1):
            path = parent / (base if k == 1 else f"{base}-{k}")
            try:  # mkdir is atomic: of two runs started in the same second, each gets its own folder
                path.mkdir()
            except FileExistsError:
                continue
            return cls(path)
        raise AssertionError("unreachable")

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
        """The run's ``config.json``, checked to hold everything ``--resume`` needs (see :meth:`read_config_file`)."""
        return self.read_config_file(self.config_file, self.RESUME_CONFIG_KEYS)

    @classmethod
    def read_config_file(cls, path: Path, keys: Sequence[str] = POLICY_CONFIG_KEYS) -> dict[str, Any]:
        """A run's ``config.json``, checked to hold ``keys`` and well-formed algorithm, tasks, env and seed.

        Raises:
            FileNotFoundError: The file does not exist.
            PolicyFileError: It is damaged, lacks a key, or a value has the wrong type; the
                message names the file (and the lrenv that wrote it, if another).
        """
        from lrenv.policy import ALGORITHMS  # lrenv.policy imports this module

        config = require_keys(read_json(path), path, keys, f"{cls.CONFIG} written by agents.train")
        tasks, task_configs, seed = config["tasks"], config["task_configs"], config["seed"]
        problems = []
        if config["algo"] not in ALGORITHMS:
            problems.append(f"algo {config['algo']!r} is not one of {', '.join(ALGORITHMS)}")
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
            problems.append(f"tasks must be a non-empty list of task names, got {tasks!r}")
        elif not isinstance(task_configs, dict) or not all(isinstance(task_configs.get(t), dict) for t in tasks):
            problems.append(f"task_configs must map each of the tasks {', '.join(tasks)} to its settings")
        if not isinstance(config["env"], dict):
            problems.append(f"env must be a mapping of env settings, got {config['env']!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            problems.append(f"seed must be an integer, got {seed!r}")
        if problems:
            raise PolicyFileError(f"{path}: {'; '.join(problems)}{written_by(config)}")
        return config

    def write_config(self, config: dict[str, Any]) -> None:
        write_json(self.config_file, config)

    def write_eval(self, data: dict[str, Any]) -> None:
        write_json(self.eval_file, data)

    def write_plot(self, figure: Any) -> None:
        """Save a matplotlib figure as ``schedule.png``."""
        self.write_figure(self.PLOT, figure)

    def write_figure(self, name: str, figure: Any) -> None:
        """Save a matplotlib figure as ``name`` in the run folder."""
        with atomic_path(self.path / name) as tmp:
            figure.savefig(tmp, format="png")

    def new_progress_csv(self) -> Path:
        """``progress.csv``, or ``progress_<k>.csv`` when a resumed run already wrote the earlier ones."""
        path, k = self.path / "progress.csv", 1
        while path.exists():  # a resumed run must not overwrite the metrics of its first part
            k += 1
            path = self.path / f"progress_{k}.csv"
        return path

    def progress_files(self) -> list[Path]:
        """SB3's metrics of each part of the run, in order: ``progress.csv``, ``progress_2.csv``, ..."""
        parts = [p for p in self.path.glob("progress*.csv") if p.stem == "progress" or p.stem.removeprefix("progress_").isdigit()]
        return sorted(parts, key=lambda p: int(p.stem.removeprefix("progress_")) if p.stem != "progress" else 1)

    def rewind_logs(self, timesteps: int) -> int:
        """Drop what the logs hold beyond ``timesteps``, the checkpoint a resumed run restarts from.

        A run killed after its last checkpoint has logged episodes and metrics that the resumed
        run trains again; without this they would appear twice. ``episodes.jsonl``,
        ``validation.jsonl`` and every ``progress*.csv`` are rewritten atomically without the
        records of later timesteps. (``best/`` may hold a policy of a later timestep: it was
        validated, and stays the best unless the resumed run beats it.)

        Returns:
            How many records were dropped.
        """
        dropped = 0
        for path in (self.episodes_file, self.path / self.VALIDATION):
            if path.is_file():
                lines = path.read_text().splitlines(keepends=True)
                # a line cut short by the kill is not a record
                kept = [line for line in lines if line.endswith("\n") and json.loads(line)["timesteps"] <= timesteps]
                dropped += len(lines) - len(kept)
                with atomic_path(path) as tmp:
                    tmp.write_text("".join(kept))
        for path in self.progress_files():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                columns, rows = reader.fieldnames or [], list(reader)
            kept_rows = [r for r in rows if not r.get(TIMESTEPS_COLUMN) or float(r[TIMESTEPS_COLUMN]) <= timesteps]
            if len(kept_rows) == len(rows):
                continue
            dropped += len(rows) - len(kept_rows)
            with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(kept_rows)
        return dropped

    def artifact_files(self) -> list[Path]:
        """What a tracker stores as the policy's artifact: the policy, its config, its evaluation."""
        names = (self.POLICY, self.WEIGHTS, self.MODEL, self.CONFIG, self.NORMALIZATION, self.VECNORMALIZE, self.EVAL, self.PLOT, self.EPISODES)
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
        """The timesteps a checkpoint was saved at.

        Raises:
            FileNotFoundError: The checkpoint has no ``state.json``.
            PolicyFileError: It is damaged or its timesteps are not a count.
        """
        path = checkpoint / cls.STATE
        timesteps = require_keys(read_json(path), path, ("timesteps",), "checkpoint state")["timesteps"]
        if not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 0:
            raise PolicyFileError(f"{path}: timesteps must be an integer >= 0, got {timesteps!r}")
        return timesteps

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

    @property
    def best_folder(self) -> Path:
        return self.path / self.BEST

    def save_best(self, model: Any, venv: Any, record: dict[str, Any]) -> None:
        """The policy that scored best on validation so far, in ``best/`` (replaced as a whole)."""
        tmp = self.path / ".tmp_best"
        shutil.rmtree(tmp, ignore_errors=True)
        self._save_policy(model, venv, tmp)
        write_json(tmp / "best.json", record)
        old = self.path / ".old_best"
        shutil.rmtree(old, ignore_errors=True)
        if self.best_folder.exists():
            os.replace(self.best_folder, old)
        os.replace(tmp, self.best_folder)
        shutil.rmtree(old, ignore_errors=True)

    def adopt_best(self) -> dict[str, Any] | None:
        """Make the best validated policy the run's policy (``policy.*``, ``normalization.json``); ``model.zip`` stays the last.

        Returns ``best.json``'s record, or ``None`` when there is no ``best/`` (nothing changes).
        """
        best = self.best_folder
        if not (best / self.POLICY).is_file():
            return None
        for name in (self.WEIGHTS, self.POLICY, self.NORMALIZATION):
            if (best / name).is_file():
                with atomic_path(self.path / name) as tmp:
                    shutil.copyfile(best / name, tmp)
        return read_json(best / "best.json")

    def append_validation(self, record: dict[str, Any]) -> None:
        with (self.path / self.VALIDATION).open("a") as f:
            f.write(json.dumps(record) + "\n")

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

        Raises:
            FileNotFoundError: The checkpoint has no ``model.zip``.
            PolicyFileError: One of its files cannot be loaded; the message names it.

        These files are SB3's pickles, which run code when loaded: resume only your own runs.
        """
        from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
        from stable_baselines3.common.vec_env import VecNormalize

        model_file, stats_file, buffer_file = checkpoint / self.MODEL, checkpoint / self.VECNORMALIZE, checkpoint / self.REPLAY_BUFFER
        if not model_file.is_file():
            raise FileNotFoundError(f"{model_file} is missing: the checkpoint {checkpoint} cannot be resumed")
        if stats_file.is_file():
            with _loading(stats_file, "SB3 VecNormalize statistics"):
                venv = VecNormalize.load(str(stats_file), venv.venv)
        with _loading(model_file, f"an SB3 {algo_cls.__name__} model"):
            model = algo_cls.load(model_file, env=venv, device=device)
        if buffer_file.is_file() and isinstance(model, OffPolicyAlgorithm):
            with _loading(buffer_file, "an SB3 replay buffer"):
                model.load_replay_buffer(buffer_file)
        return model, venv

    @classmethod
    def _save_policy(cls, model: Any, venv: Any, folder: Path, replay_buffer: bool = False) -> None:
        """The policy (lrenv's policy.json + policy.safetensors and SB3's model.zip), observation
        statistics (JSON and SB3 pickle), optionally the replay buffer."""
        from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
        from stable_baselines3.common.vec_env import unwrap_vec_normalize

        from lrenv.policy import save_policy_files  # lrenv.policy imports this module

        folder.mkdir(parents=True, exist_ok=True)
        save_policy_files(model, folder)
        model.save(folder / cls.MODEL)
        venv = unwrap_vec_normalize(venv) if venv is not None else None  # VecNormalize may sit under other wrappers
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
        """The observation statistics saved in a policy folder, or ``None`` if it has none.

        Raises:
            PolicyFileError: ``normalization.json`` is damaged or its statistics are malformed.
        """
        path = Path(folder) / cls.NORMALIZATION
        if not path.is_file():
            return None
        data = require_keys(read_json(path), path, ("mean", "var", "count", "clip_obs", "epsilon"), "set of observation statistics")
        try:
            stats = ObsNormalization.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise PolicyFileError(f"{path}: the statistics are not numbers ({exc})") from exc
        if stats.mean.ndim != 1 or stats.mean.shape != stats.var.shape:
            raise PolicyFileError(f"{path}: mean and var must be lists of the same length, got shapes {stats.mean.shape} and {stats.var.shape}")
        values = np.concatenate([stats.mean, stats.var, [stats.clip_obs, stats.epsilon]])
        if not np.all(np.isfinite(values)) or np.any(stats.var < 0) or stats.clip_obs <= 0 or stats.epsilon < 0:
            raise PolicyFileError(f"{path}: the statistics must be finite, with var >= 0, clip_obs > 0 and epsilon >= 0")
        return stats


@contextmanager
def _loading(path: Path, what: str) -> Iterator[None]:
    """Turns whatever SB3 raises on a damaged file into a :class:`PolicyFileError` that names it."""
    try:
        yield
    except Exception as exc:  # SB3 and pickle raise anything from EOFError to KeyError on a damaged file
        raise PolicyFileError(f"{path} could not be loaded as {what} ({type(exc).__name__}: {exc})") from exc
