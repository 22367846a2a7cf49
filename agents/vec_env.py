"""The training VecEnv of ``agents.train``: batched or not, monitored, normalised as configured."""

from __future__ import annotations

import warnings
from typing import Any

from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecMonitor, VecNormalize

import lrenv
from lrenv.env.config import EnvConfig
from lrenv.env.mixture import MixtureVecEnv, PairedSeeds


def make_vec_env(config: dict[str, Any], env: EnvConfig, seed: int) -> tuple[VecEnv, str]:
    """The training VecEnv and which kind it is.

    ``vec_env: auto`` trains one task as one :class:`lrenv.BatchedVecEnv` population when its
    model can be batched, and otherwise (or for a task list) uses a ``DummyVecEnv`` of
    :class:`lrenv.LREnv`; ``batched`` and ``dummy`` force one of them. A config with
    ``populations`` (a training distribution) trains one BatchedVecEnv per entry, side by side
    in a :class:`lrenv.env.mixture.MixtureVecEnv`; with ``paired_seeds`` every reset starts
    the same episodes until a :class:`~lrenv.env.mixture.NewDrawEachRollout` callback draws
    new ones. With ``ray_actors`` K > 0 the same populations (or one task's ``n_envs``) are
    split into K shards on Ray actors (:class:`lrenv.env.ray_vec_env.RayVecEnv`, at
    ``config["ray_address"]``), in the same env order.

    Args:
        config: The run's config (tasks, n_envs, vec_env, normalize_obs, clip_obs, gamma).
        env: The env settings.
        seed: Seed of the envs' first episodes.

    Returns:
        ``(venv, kind)``: the VecEnv (a ``VecMonitor``, under a ``VecNormalize`` when the
        config normalises observations) and ``"batched"``, ``"dummy"``, ``"mixture"`` or ``"ray"``.
    """
    tasks, n_envs, kind = config["tasks"], config["n_envs"], config["vec_env"]
    venv: VecEnv | None = None
    if config.get("ray_actors") or config.get("populations"):
        venv, kind = (ray_shards(config, env), "ray") if config.get("ray_actors") else (population_mixture(config["populations"], env), "mixture")
        venv.seed(seed)
        if config.get("paired_seeds"):
            venv = PairedSeeds(venv, seed)
    elif kind in ("auto", "batched") and len(tasks) == 1:
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


def population_mixture(populations: list[dict[str, Any]], env: EnvConfig) -> MixtureVecEnv:
    """One :class:`lrenv.BatchedVecEnv` per resolved ``populations`` entry, side by side."""
    return MixtureVecEnv([lrenv.BatchedVecEnv(p["task"], p["n_envs"], config=env.replace(task_config=p["task_config"] or None)) for p in populations])


def make_validation_env(config: dict[str, Any], env: EnvConfig) -> tuple[VecEnv, list[str]]:
    """The validation VecEnv of :class:`lrenv.agents.callbacks.KeepBest` (one episode per env) and each env's label.

    Built like the training one, without paired seeds, with its observation statistics frozen
    (they are copied from training before each evaluation).
    """
    venv, _ = make_vec_env({**config, "paired_seeds": False, "ray_actors": 0}, env, 0)
    if isinstance(venv, VecNormalize):
        venv.training = False
    return venv, env_labels(config)


def env_labels(config: dict[str, Any]) -> list[str]:
    """A label per training env: its task, with its population's own TaskConfig overrides."""
    if not config.get("populations"):
        tasks = config["tasks"]
        return [tasks[k % len(tasks)] if len(tasks) > 1 else tasks[0] for k in range(config["n_envs"])]
    labels = []
    for p in config["populations"]:
        own = ",".join(f"{k}={v}" for k, v in sorted((p["task_config"] or {}).items()) if k in ("optimizer", "epochs", "batch_size"))
        labels += [f"{p['task']}[{own}]" if own else p["task"]] * p["n_envs"]
    return labels


def ray_shards(config: dict[str, Any], env: EnvConfig) -> VecEnv:
    """The config's populations (or its one task's ``n_envs``) as ``ray_actors`` shards on Ray actors."""
    from lrenv.env.ray_vec_env import RayVecEnv, split_populations

    if config.get("populations"):
        specs = [(p["task"], p["n_envs"], env.replace(task_config=p["task_config"] or None).to_dict()) for p in config["populations"]]
    elif len(config["tasks"]) == 1:
        specs = [(config["tasks"][0], config["n_envs"], env.to_dict())]
    else:
        raise ValueError("ray_actors shards one task or a populations list; for several tasks write them as populations")
    return RayVecEnv(split_populations(specs, config["ray_actors"]), address=config.get("ray_address"), num_gpus=config.get("ray_gpus_per_actor") or 0.0)
