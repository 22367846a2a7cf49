"""The training VecEnv of ``agents.train``: batched or not, monitored, normalised as configured."""

from __future__ import annotations

import warnings
from typing import Any

from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecMonitor, VecNormalize

import lrenv
from lrenv.env.config import EnvConfig


def make_vec_env(config: dict[str, Any], env: EnvConfig, seed: int) -> tuple[VecEnv, str]:
    """The training VecEnv and which kind it is.

    ``vec_env: auto`` trains one task as one :class:`lrenv.BatchedVecEnv` population when its
    model can be batched, and otherwise (or for a task list) uses a ``DummyVecEnv`` of
    :class:`lrenv.LREnv`; ``batched`` and ``dummy`` force one of them.

    Args:
        config: The run's config (tasks, n_envs, vec_env, normalize_obs, clip_obs, gamma).
        env: The env settings.
        seed: Seed of the envs' first episodes.

    Returns:
        ``(venv, kind)``: the VecEnv (a ``VecMonitor``, under a ``VecNormalize`` when the
        config normalises observations) and ``"batched"`` or ``"dummy"``.
    """
    tasks, n_envs, kind = config["tasks"], config["n_envs"], config["vec_env"]
    venv: VecEnv | None = None
    if kind in ("auto", "batched") and len(tasks) == 1:
        # the fallback warning only matters when batching was asked for: hold it until we know
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            venv = lrenv.BatchedVecEnv(tasks[0], n_envs, seed=seed, config=env)
        if kind == "auto" and not venv.engine.batched:
            print(f"task {tasks[0]} cannot be batched ({venv.engine.fallback_reason}): using a DummyVecEnv of LREnv")
            venv = None
        else:
            for w in caught:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            kind = "batched"
    elif kind == "batched":
        raise ValueError("vec_env 'batched' trains one task; use 'auto' or 'dummy' for a task list")
    if venv is None:
        spec = tasks[0] if len(tasks) == 1 else list(tasks)
        venv = DummyVecEnv([lambda: lrenv.LREnv(spec, config=env) for _ in range(n_envs)])
        venv.seed(seed)
        kind = "dummy"
    venv = VecMonitor(venv)
    if config["normalize_obs"]:
        gamma = float(config["hyperparams"].get("gamma", 0.99))
        venv = VecNormalize(venv, norm_obs=True, norm_reward=False, clip_obs=float(config["clip_obs"]), gamma=gamma)
    return venv, kind
