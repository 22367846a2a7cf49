"""The resolved config of a training run: config file < named options < ``--set``, validated.

A config (see ``agents/configs/ppo.yaml``) holds the keys :data:`CONFIG_KEYS`. Resolving one
reads the file, applies the overrides, checks every key it can (an unknown key is an error
that lists the allowed ones), fills the env section with every :class:`lrenv.EnvConfig`
setting, and adds what the run folder's ``config.json`` records besides: the tasks and their
resolved settings, seed, device, a name and the package versions. :func:`build_hyperparams`
turns the hyperparameters' names (activation functions, action noise) into objects.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise

import lrenv
from lrenv.baselines import BASELINES
from lrenv.env.config import EnvConfig
from lrenv.policy import algorithm_class
from lrenv.task import check_overrides

CONFIG_DIR = Path(__file__).parent / "configs"
#: Keys of a config file (see agents/configs/ppo.yaml).
CONFIG_KEYS = (
    "algo",
    "timesteps",
    "n_envs",
    "vec_env",
    "normalize_obs",
    "clip_obs",
    "checkpoint_freq",
    "eval_episodes",
    "eval_freq",
    "populations",
    "paired_seeds",
    "ray_actors",
    "reference_baselines",
    "env",
    "policy",
    "hyperparams",
)
#: Keys of one entry of ``populations`` (one batched population of a task variant).
POPULATION_KEYS = ("task", "n_envs", "task_config")
#: Config keys that a named command-line option (``--timesteps``, ...) overrides.
OPTION_KEYS = ("timesteps", "n_envs", "checkpoint_freq", "eval_episodes", "ray_actors")
VEC_ENVS = ("auto", "batched", "dummy")
#: Algorithm arguments the script sets itself.
RESERVED_HYPERPARAMS = ("self", "policy", "env", "seed", "device", "verbose", "tensorboard_log", "_init_setup_model", "kwargs")
ACTIVATIONS = {
    "tanh": torch.nn.Tanh,
    "relu": torch.nn.ReLU,
    "elu": torch.nn.ELU,
    "leaky_relu": torch.nn.LeakyReLU,
    "gelu": torch.nn.GELU,
    "silu": torch.nn.SiLU,
}
ACTION_NOISES = {"normal": NormalActionNoise, "ornstein_uhlenbeck": OrnsteinUhlenbeckActionNoise}


def resolve_config(
    tasks: Sequence[str],
    *,
    algo: str | None = None,
    config_file: str | None = None,
    options: Mapping[str, int | None] | None = None,
    assignments: Sequence[str] = (),
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """The validated config of a new run.

    Args:
        tasks: Task names (one, or several for one multi-task policy).
        algo: The algorithm; default: the config file's, else ``"ppo"``.
        config_file: A YAML/JSON config to use instead of ``agents/configs/<algo>.yaml``.
        options: Values of the named options (:data:`OPTION_KEYS`); ``None`` keeps the config's.
        assignments: ``KEY=VALUE`` overrides (dotted keys, YAML values), applied last.
        seed: Seed of the agent and the envs.
        device: Torch device of the agent's networks.

    Raises:
        ValueError: A key, value, file or name is unknown or invalid; the message lists what is allowed.
        TypeError: The env section has an unknown key; the message lists the allowed ones.
    """
    if config_file:
        config = read_config_file(Path(config_file))
        algo = (algo or config.get("algo") or "ppo").lower()
    else:
        algo = (algo or "ppo").lower()
        algorithm_class(algo)  # unknown --algo: a clear error before looking for its file
        config = read_config_file(CONFIG_DIR / f"{algo}.yaml")
    config["algo"] = algo
    for key, value in (options or {}).items():
        if value is not None:
            config[key] = value
    for assignment in assignments:
        set_key(config, assignment)
    config["algo"] = str(config["algo"]).lower()
    config.setdefault("hyperparams", {})
    config.setdefault("policy", "MlpPolicy")
    config.setdefault("vec_env", "auto")
    config.setdefault("normalize_obs", True)
    config.setdefault("clip_obs", 10.0)
    config.setdefault("eval_freq", 0)
    config.setdefault("populations", None)
    config.setdefault("paired_seeds", False)
    config.setdefault("ray_actors", 0)
    config.setdefault("reference_baselines", None)
    validate_config(config)
    config["reference_baselines"] = reference_baselines(config)  # config.json names them
    env = env_config(config)
    config["env"] = env.to_dict()  # every setting, defaults included: the run folder says exactly what it trained with
    if config["populations"]:
        # the populations are the training distribution: they name the tasks and the number of envs
        config["populations"] = [resolve_population(entry, env, i) for i, entry in enumerate(config["populations"])]
        config["n_envs"] = sum(p["n_envs"] for p in config["populations"])
        tasks = list(dict.fromkeys(p["task"] for p in config["populations"]))
        task_objs = [lrenv.make_task(name, **next(p["task_config"] for p in config["populations"] if p["task"] == name)) for name in tasks]
    else:
        task_objs = [lrenv.make_task(name, **env.task_overrides) for name in tasks]  # unknown names list the registered ones
    config["tasks"] = [t.name for t in task_objs]
    config["task_configs"] = {t.name: dataclasses.asdict(t.config) for t in task_objs}
    config["seed"] = seed
    config["device"] = device
    config["name"] = f"{algo}-{'+'.join(config['tasks'])}-s{seed}"
    config["versions"] = versions()
    return config


def resolve_population(entry: Any, env: EnvConfig, index: int) -> dict[str, Any]:
    """One entry of ``populations``, checked, with the env's task overrides merged into its own.

    Raises:
        ValueError: Not a mapping of :data:`POPULATION_KEYS`, an unknown task or an invalid value.
    """
    where = f"populations[{index}]"
    if not isinstance(entry, Mapping) or "task" not in entry:
        raise ValueError(f"{where} must be a mapping with a task and optionally n_envs and task_config, got {entry!r}")
    unknown = sorted(set(entry) - set(POPULATION_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(POPULATION_KEYS)}")
    n_envs = entry.get("n_envs", 1)
    if not isinstance(n_envs, int) or isinstance(n_envs, bool) or n_envs < 1:
        raise ValueError(f"{where}: n_envs must be a positive integer, got {n_envs!r}")
    own = entry.get("task_config") or {}
    if not isinstance(own, Mapping):
        raise ValueError(f"{where}: task_config must be a mapping of TaskConfig fields, got {own!r}")
    overrides = {**env.task_overrides, **own}
    try:
        task = lrenv.make_task(entry["task"], **overrides)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc.args[0] if exc.args else exc}") from exc
    return {"task": task.name, "n_envs": n_envs, "task_config": check_overrides(overrides, where, "setting")}


def reference_baselines(config: Mapping[str, Any]) -> list[str]:
    """The tuned baselines whose returns a run is plotted beside, in :data:`lrenv.baselines.BASELINES` order.

    Absent or ``None`` (configs of runs that predate the key): all of them, the set
    ``agents.evaluate`` tunes, so both share the evaluation cache; the canonical order keeps
    the cache's populations the same whatever order the config lists them in.
    """
    chosen = config.get("reference_baselines")
    return list(BASELINES) if chosen is None else [name for name in BASELINES if name in chosen]


def env_config(config: Mapping[str, Any], source: str = "the env section of the config") -> EnvConfig:
    """The config's env settings; an unknown key is a ``TypeError`` that lists the allowed ones.

    Args:
        config: A config (its ``"env"`` key, if any, maps :class:`lrenv.EnvConfig` fields to values).
        source: Where the config came from, for error messages.
    """
    env = config.get("env") or {}
    if not isinstance(env, Mapping):
        raise ValueError(f"{source} must be a mapping of {', '.join(EnvConfig.field_names())}, got {env!r}")
    return EnvConfig.from_kwargs(env, owner=source)


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON: both work
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of {', '.join(CONFIG_KEYS)}")
    return data


def parse_value(text: str) -> Any:
    """A YAML value; also numbers YAML 1.1 reads as strings, such as ``3e-4``."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def set_key(config: dict[str, Any], assignment: str) -> None:
    """Apply one ``KEY=VALUE`` override (dotted key) to ``config``."""
    if "=" not in assignment:
        raise ValueError(f"--set expects KEY=VALUE, got {assignment!r}")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    if parts[0] not in CONFIG_KEYS:
        raise ValueError(f"unknown config key {parts[0]!r} in --set {assignment}; allowed: {', '.join(CONFIG_KEYS)}")
    node = config
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"--set {assignment}: {part!r} is not a mapping")
        node = child
    node[parts[-1]] = parse_value(text)


def allowed_hyperparams(algo_cls: type) -> list[str]:
    """The algorithm's keyword arguments; a subclass that forwards ``**kwargs`` adds its parent's."""
    names: list[str] = []
    for cls in algo_cls.__mro__:
        if "__init__" not in vars(cls):
            continue
        params = inspect.signature(cls.__init__).parameters
        names += [p for p, v in params.items() if p not in RESERVED_HYPERPARAMS and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD) and p not in names]
        if not any(v.kind == v.VAR_KEYWORD for v in params.values()):
            break
    return names


def validate_config(config: dict[str, Any]) -> None:
    """Unknown keys anywhere we can check are errors that list what is allowed."""
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(unknown)}; allowed: {', '.join(CONFIG_KEYS)}")
    algo_cls = algorithm_class(config["algo"])
    allowed = allowed_hyperparams(algo_cls)
    unknown = sorted(set(config.get("hyperparams") or {}) - set(allowed))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {', '.join(unknown)} for {config['algo']}; allowed: {', '.join(allowed)}")
    if config.get("vec_env", "auto") not in VEC_ENVS:
        raise ValueError(f"unknown vec_env {config['vec_env']!r}; choose one of {', '.join(VEC_ENVS)}")
    for key in ("timesteps", "n_envs", "checkpoint_freq"):
        if not isinstance(config.get(key), int) or config[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {config.get(key)!r}")
    for key in ("eval_episodes", "eval_freq", "ray_actors"):
        if not isinstance(config.get(key), int) or isinstance(config[key], bool) or config[key] < 0:
            raise ValueError(f"{key} must be an integer >= 0, got {config.get(key)!r}")
    if not isinstance(config.get("paired_seeds"), bool):
        raise ValueError(f"paired_seeds must be true or false, got {config.get('paired_seeds')!r}")
    chosen = config.get("reference_baselines")
    if chosen is not None:
        if not isinstance(chosen, list) or not all(isinstance(name, str) for name in chosen):
            raise ValueError(f"reference_baselines must be null (all) or a list of baseline names ([] for none), got {chosen!r}")
        unknown = [name for name in chosen if name not in BASELINES]
        if unknown:
            raise ValueError(f"unknown reference baseline(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(BASELINES)}")
    if config.get("populations") is not None and not (isinstance(config["populations"], list) and config["populations"]):
        raise ValueError(f"populations must be null or a non-empty list of {{task, n_envs, task_config}}, got {config['populations']!r}")


def versions() -> dict[str, str]:
    """Versions of the packages a run depends on, for its config.json."""
    import gymnasium
    import stable_baselines3

    found = {
        "lrenv": lrenv.__version__,
        "torch": torch.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "gymnasium": gymnasium.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    try:
        import sb3_contrib

        found["sb3_contrib"] = sb3_contrib.__version__
    except ImportError:
        pass
    return found


def build_hyperparams(config: Mapping[str, Any]) -> dict[str, Any]:
    """The algorithm's keyword arguments, with names in the config turned into objects."""
    hp = copy.deepcopy(config["hyperparams"])
    policy_kwargs = hp.get("policy_kwargs") or {}
    if isinstance(policy_kwargs.get("activation_fn"), str):
        name = policy_kwargs["activation_fn"].lower()
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown activation_fn {name!r}; choose one of {', '.join(ACTIVATIONS)}")
        policy_kwargs["activation_fn"] = ACTIVATIONS[name]
    if policy_kwargs:
        hp["policy_kwargs"] = policy_kwargs
    noise = hp.get("action_noise")
    if isinstance(noise, dict):
        kind = noise.get("type", "normal")
        if kind not in ACTION_NOISES:
            raise ValueError(f"unknown action_noise type {kind!r}; choose one of {', '.join(ACTION_NOISES)}")
        hp["action_noise"] = ACTION_NOISES[kind](mean=np.zeros(1), sigma=float(noise.get("sigma", 0.1)) * np.ones(1))
    return hp
