"""Load a trained agent back from its run folder: the policy, its config, its normalisation.

:func:`load_policy` turns a run folder written by ``agents/train.py`` (its layout is
:class:`lrenv.run_dir.RunDir`'s), one of its checkpoint folders, or a ``model.zip`` inside
either, into a :class:`LoadedPolicy`, whose :meth:`~LoadedPolicy.predict` normalises
observations exactly as SB3's ``VecNormalize.normalize_obs`` did in training, then asks the
policy. The scheduler (:mod:`lrenv.scheduler`) and evaluation build on it.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lrenv.env.config import EnvConfig
from lrenv.run_dir import ObsNormalization, RunDir

__all__ = ["ALGORITHMS", "LoadedPolicy", "ObsNormalization", "algorithm_class", "load_policy"]

#: Algorithm name -> "module:Class". The sb3-contrib ones need ``pip install sb3-contrib``.
ALGORITHMS: dict[str, str] = {
    "ppo": "stable_baselines3:PPO",
    "a2c": "stable_baselines3:A2C",
    "sac": "stable_baselines3:SAC",
    "td3": "stable_baselines3:TD3",
    "tqc": "sb3_contrib:TQC",
    "trpo": "sb3_contrib:TRPO",
}

# SB3 pickles schedules (lambdas) into model.zip; replacing them on load keeps a policy
# loadable across Python versions, and prediction never uses them.
_NO_SCHEDULES = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0, "clip_range": lambda _: 0.0, "clip_range_vf": None}


def algorithm_class(name: str) -> type:
    """The SB3 algorithm class called ``name`` (``"ppo"``, ``"sac"``, ...).

    Raises:
        ValueError: ``name`` is not one of :data:`ALGORITHMS`.
        ImportError: It is an sb3-contrib algorithm and sb3-contrib is not installed.
    """
    key = name.lower()
    if key not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
    module_name, class_name = ALGORITHMS[key].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"algorithm {name!r} needs the package {module_name}: pip install sb3-contrib") from exc
    return getattr(module, class_name)


@dataclass
class LoadedPolicy:
    """A trained policy with the settings it was trained under.

    Attributes:
        model: The SB3 algorithm (on the CPU).
        config: The run's ``config.json`` as a dict.
        normalization: Observation statistics applied by :meth:`predict`, or ``None``.
        name: A short label, e.g. ``"ppo-MNIST1D-MLP-v0-s0"``.
        path: The folder the policy was loaded from.
    """

    model: Any
    config: dict[str, Any]
    normalization: ObsNormalization | None
    name: str
    path: Path

    @property
    def env_config(self) -> EnvConfig:
        """The env settings the run trained with."""
        return EnvConfig.from_dict(self.config.get("env"), source=f"the {RunDir.CONFIG} of {self.path}")

    @property
    def env_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`lrenv.LREnv` / :class:`lrenv.BatchedVecEnv` the run trained
        with: every :class:`lrenv.EnvConfig` field but ``device``. The task, seed and device are
        not included: pass them yourself (the training tasks are in :attr:`tasks`)."""
        return {k: v for k, v in self.env_config.to_dict().items() if k != "device"}

    @property
    def tasks(self) -> list[str]:
        """Names of the tasks the policy was trained on."""
        return list(self.config["tasks"])

    def task_config(self, task: str | None = None) -> dict[str, Any]:
        """The resolved :class:`lrenv.TaskConfig` fields of a training task (the first by default)."""
        configs = self.config["task_configs"]
        name = self.tasks[0] if task is None else task
        if name not in configs:
            raise ValueError(f"the policy was not trained on task {name!r}; it was trained on {', '.join(configs)}")
        return dict(configs[name])

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        """Observations as the policy saw them in training (float32)."""
        if self.normalization is None:
            return np.asarray(obs, dtype=np.float32)
        return self.normalization.normalize(obs)

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions for raw (unnormalised) observations.

        Args:
            obs: ``(n, n_features)`` observations as :class:`lrenv.LREnv` returns them, or one
                observation ``(n_features,)``.
            deterministic: The policy's mode (``True``) or a sample from it.

        Returns:
            Actions in [-1, 1], ``(n, 1)`` float32 (``(1,)`` for one observation).
        """
        actions, _ = self.model.predict(self.normalize(obs), deterministic=deterministic)
        return np.asarray(actions, dtype=np.float32)

    def __repr__(self) -> str:
        return f"LoadedPolicy(name={self.name!r}, path='{self.path}')"


def load_policy(path: str | Path, device: str = "cpu") -> LoadedPolicy:
    """Load a trained policy from a run folder, a checkpoint folder, or a ``model.zip`` in one.

    Args:
        path: ``runs/<run>``, ``runs/<run>/checkpoints/step_<N>`` or a ``model.zip`` in either.
        device: Torch device of the policy network.

    Returns:
        The policy, with the normalisation statistics saved beside its model.

    Raises:
        FileNotFoundError: The folder holds no model or its run has no ``config.json``.
    """
    path = Path(path)
    if path.is_dir():
        folder, model_file = path, path / RunDir.MODEL
    else:
        folder, model_file = path.parent, path
    if not model_file.is_file():
        hint = " (the run may have been interrupted before its end: use a folder in checkpoints/, or resume it)" if RunDir(folder).checkpoints() else ""
        raise FileNotFoundError(f"no policy at {model_file}{hint}")
    config = json.loads(RunDir.find_config(folder).read_text())
    model = algorithm_class(config["algo"]).load(model_file, device=device, custom_objects=_NO_SCHEDULES)
    normalization = RunDir.read_normalization(folder)
    if normalization is None and config.get("normalize_obs"):
        raise FileNotFoundError(f"the run normalised observations but {folder / RunDir.NORMALIZATION} is missing")
    name = config.get("name") or f"{config['algo']}-{'+'.join(config['tasks'])}-s{config['seed']}"
    return LoadedPolicy(model=model, config=config, normalization=normalization, name=name, path=folder)
