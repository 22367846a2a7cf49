"""Load a trained agent back from its run folder, through lrenv's pickle-free policy files.

A policy folder (a run folder written by ``agents/train.py``, layout :class:`lrenv.run_dir.RunDir`,
or one of its checkpoint folders) holds the policy twice:

* ``policy.json`` + ``policy.safetensors``: lrenv's own format, plain JSON and tensors. Loading
  it runs no code from the files: the network is rebuilt from allow-listed SB3 classes and
  its weights are copied in (:func:`save_policy_files`, :func:`read_policy_files`).
* ``model.zip``: Stable-Baselines3's format, for ``--resume`` and SB3 users. It stores Python
  pickles, which run arbitrary code when unpickled, so :func:`load_policy` reads it only when
  told ``trust=True``.

:func:`load_policy` turns a policy folder into a :class:`LoadedPolicy`, whose
:meth:`~LoadedPolicy.predict` normalises observations exactly as SB3's
``VecNormalize.normalize_obs`` did in training, then asks the policy. The scheduler
(:mod:`lrenv.scheduler`) and evaluation build on it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lrenv.env.config import EnvConfig
from lrenv.env.features import FEATURE_SETS
from lrenv.run_dir import ObsNormalization, PolicyFileError, RunDir, atomic_path, read_json, require_keys, written_by

__all__ = [
    "ALGORITHMS",
    "ARS_POLICY",
    "DEFAULT_POLICY",
    "FORMULA_POLICY",
    "SHIPPED_POLICIES",
    "POLICY_FORMAT",
    "LoadedPolicy",
    "ObsNormalization",
    "PolicyFileError",
    "UntrustedPolicyError",
    "algorithm_class",
    "load_policy",
    "read_policy_files",
    "save_policy_files",
]

#: Algorithm name -> "module:Class". The sb3-contrib ones need ``pip install sb3-contrib``.
ALGORITHMS: dict[str, str] = {
    "ppo": "stable_baselines3:PPO",
    "a2c": "stable_baselines3:A2C",
    "sac": "stable_baselines3:SAC",
    "td3": "stable_baselines3:TD3",
    "tqc": "sb3_contrib:TQC",
    "trpo": "sb3_contrib:TRPO",
    "ars": "lrenv.agents.ars:ARS",  # sb3-contrib's ARS, counting timesteps as inner epochs
}

#: Version of the ``policy.json`` layout this lrenv writes; it reads this one only.
POLICY_FORMAT = 1

# The allow-lists: the only classes a policy.json can name. Everything else in it is data.
_ACTOR_CRITIC = "stable_baselines3.common.policies:ActorCriticPolicy"
_POLICY_CLASSES: dict[str, tuple[str, ...]] = {
    "ppo": (_ACTOR_CRITIC,),
    "a2c": (_ACTOR_CRITIC,),
    "trpo": (_ACTOR_CRITIC,),  # sb3-contrib's TRPO uses SB3's own ActorCriticPolicy
    "sac": ("stable_baselines3.sac.policies:SACPolicy",),
    "td3": ("stable_baselines3.td3.policies:TD3Policy",),
    "tqc": ("sb3_contrib.tqc.policies:TQCPolicy",),
    "ars": ("sb3_contrib.ars.policies:ARSPolicy", "sb3_contrib.ars.policies:ARSLinearPolicy"),
}
#: Algorithms whose policies are built without a learning-rate schedule (they train no optimizer).
_NO_LR_SCHEDULE = ("ars",)
_CLASS_KWARGS: dict[str, dict[str, str]] = {
    "activation_fn": {name: f"torch.nn:{name}" for name in ("Tanh", "ReLU", "ELU", "LeakyReLU", "GELU", "SiLU", "Sigmoid", "Softplus", "Mish")},
    "optimizer_class": {name: f"torch.optim:{name}" for name in ("Adam", "AdamW", "RMSprop", "SGD")},
    "features_extractor_class": {"FlattenExtractor": "stable_baselines3.common.torch_layers:FlattenExtractor"},
}
_SPACE_ARGS = ("observation_space", "action_space", "lr_schedule")
_DTYPES = ("float32", "float64")
_POLICY_KEYS = ("format", "algo", "policy_class", "kwargs", "observation_space", "action_space", "weights_sha256")

# SB3 pickles schedules (lambdas) into model.zip; replacing them on a trusted load keeps a
# policy loadable across Python versions, and prediction never uses them.
_NO_SCHEDULES = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0, "clip_range": lambda _: 0.0, "clip_range_vf": None}


class UntrustedPolicyError(PolicyFileError):
    """:func:`load_policy` was asked to read an SB3 ``model.zip`` without ``trust=True``."""


def algorithm_class(name: str) -> type:
    """The SB3 algorithm class called ``name`` (``"ppo"``, ``"sac"``, ...).

    Raises:
        ValueError: ``name`` is not one of :data:`ALGORITHMS`.
        ImportError: It is an sb3-contrib algorithm and sb3-contrib is not installed.
    """
    key = name.lower()
    if key not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
    return _import(ALGORITHMS[key], name)


def _import(target: str, algo: str) -> Any:
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"algorithm {algo!r} needs the package {module_name.split('.')[0]}: pip install sb3-contrib") from exc
    return getattr(module, class_name)


@dataclass
class LoadedPolicy:
    """A trained policy with the settings it was trained under.

    Attributes:
        model: The policy network: an SB3 policy (``BasePolicy``, on ``device``) rebuilt from
            ``policy.json`` / ``policy.safetensors``; or, loaded with ``trust=True`` from a
            ``model.zip``, the SB3 algorithm; for a closed-form formula, a
            :class:`lrenv.formula.FormulaModel`. All answer ``predict(obs, deterministic)``.
        config: The run's ``config.json`` as a dict (for a formula: ``algo`` ``"formula"``,
            its ``env`` settings, ``tasks``, ``task_configs`` and ``name``).
        normalization: Observation statistics applied by :meth:`predict`, or ``None``.
        name: A short label, e.g. ``"ppo-MNIST1D-MLP-v0-s0"``.
        path: The folder the policy was loaded from (a formula's: its ``formula.json``).
        timesteps: Agent timesteps the policy was trained for, when the files say.
    """

    model: Any
    config: dict[str, Any]
    normalization: ObsNormalization | None
    name: str
    path: Path
    timesteps: int | None = None

    @property
    def env_config(self) -> EnvConfig:
        """The env settings the policy is used with: those the run trained with, starting from
        each task's ``default_lr`` (``base_lr_spread`` 1; a mis-set base LR is a training device)."""
        env = EnvConfig.from_dict(self.config.get("env"), source=f"the {RunDir.CONFIG} of {self.path}")
        return env.replace(base_lr_spread=1.0)

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
        """The resolved :class:`lrenv.TaskConfig` fields of a training task (the first by default).

        Raises:
            ValueError: The policy was trained (or a formula fitted) on no task, or not on ``task``.
        """
        configs = self.config.get("task_configs") or {}
        if not self.tasks:
            raise ValueError(
                f"the policy {self.name!r} names no training task, so it has no task settings (epoch budget, LR range): "
                "pass them yourself (e.g. epochs=... to a scheduler)"
            )
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


#: The policies shipped inside the package, by name: ``"default"`` (the default Ψ, a formula
#: meta-learned by ``agents.evolve``), ``"ars"`` (the policy trained with RL by ``agents.train
#: --config agents/configs/default.yaml``) and ``"formula"`` (the closed form of ``"ars"``
#: distilled by ``agents.distill``).
DEFAULT_POLICY = "default"
ARS_POLICY = "ars"
FORMULA_POLICY = "formula"
DEFAULT_POLICY_DIR = Path(__file__).parent / "policies" / DEFAULT_POLICY
ARS_POLICY_DIR = Path(__file__).parent / "policies" / ARS_POLICY
FORMULA_POLICY_DIR = Path(__file__).parent / "policies" / FORMULA_POLICY
#: ``"format"`` of a closed-form policy's JSON file (:mod:`lrenv.formula`), and its file name in a folder.
_FORMULA_FORMAT = "lrenv-formula"
_FORMULA_FILE = "formula.json"


def load_policy(path: str | Path, device: str = "cpu", *, trust: bool = False) -> LoadedPolicy:
    """Load a trained policy from a run folder or a checkpoint folder, a closed-form formula, or a shipped one.

    Reads ``policy.json``, ``policy.safetensors``, ``normalization.json`` and the run's
    ``config.json``: data only, no code runs. A formula (:mod:`lrenv.formula`) is read from its
    ``formula.json`` and checked against a fixed grammar: no code runs either.

    Args:
        path: ``"default"``, ``"ars"`` or ``"formula"`` for the policies shipped with lrenv (a
            folder of such a name is ``"./default"``); or ``runs/<run>``,
            ``runs/<run>/checkpoints/step_<N>`` or the ``policy.json`` in either; a formula
            file (a ``.json`` file whose ``"format"`` is ``"lrenv-formula"``) or a folder that
            holds a ``formula.json`` and no ``policy.json``; with ``trust=True`` also an SB3
            ``model.zip`` (or a folder that has only that).
        device: Torch device of the policy network.
        trust: Allow reading an SB3 ``model.zip``. Its pickles run code when loaded: pass
            ``True`` only for files you made yourself.

    Returns:
        The policy, with the normalisation statistics saved beside it.

    Raises:
        FileNotFoundError: The folder holds no policy, a policy file or the run's ``config.json``
            is missing.
        UntrustedPolicyError: Only an SB3 ``model.zip`` is there (or was passed) and ``trust`` is false.
        PolicyFileError: A file is damaged, incomplete or of a format this lrenv cannot read;
            the message names it.
    """
    if isinstance(path, str) and path in SHIPPED_POLICIES:
        path = shipped_policy_dir(path)
    formula_file = _formula_file(path)
    if formula_file is not None:
        from lrenv.formula import load_formula  # lrenv.formula builds on this module

        return load_formula(formula_file)
    folder, zip_file = _locate(Path(path), trust)
    config_file = RunDir.find_config(folder)
    config = RunDir.read_config_file(config_file)
    try:
        env = EnvConfig.from_dict(config["env"], source=str(config_file))
    except ValueError as exc:  # e.g. a setting that only a newer lrenv knows
        raise PolicyFileError(f"{exc}{written_by(config)}") from exc
    if zip_file is None:
        model, timesteps = read_policy_files(folder, config["algo"], device=device)
    else:
        model = _load_sb3_zip(zip_file, config["algo"], device)
        timesteps = int(model.num_timesteps)
    normalization = RunDir.read_normalization(folder)
    if normalization is None and config.get("normalize_obs"):
        raise FileNotFoundError(f"the run normalised observations but {folder / RunDir.NORMALIZATION} is missing")
    obs_shape = tuple(model.observation_space.shape)
    if normalization is not None and normalization.mean.shape != obs_shape:
        raise PolicyFileError(f"{folder / RunDir.NORMALIZATION} holds statistics of {normalization.mean.shape[0]} features, the policy observes {obs_shape}")
    n_features = len(FEATURE_SETS[env.features])
    if obs_shape != (n_features,):
        raise PolicyFileError(f"the policy in {folder} observes {obs_shape}, but {config_file} says features {env.features!r}: {n_features} of them")
    name = config.get("name") or f"{config['algo']}-{'+'.join(config['tasks'])}-s{config['seed']}"
    return LoadedPolicy(model=model, config=config, normalization=normalization, name=str(name), path=folder, timesteps=timesteps)


#: The shipped policies' names, each with the file its folder must hold.
SHIPPED_POLICIES = {DEFAULT_POLICY: _FORMULA_FILE, ARS_POLICY: RunDir.POLICY, FORMULA_POLICY: _FORMULA_FILE}


def shipped_policy_dir(name: str) -> Path:
    """The folder of a policy shipped inside the package (a key of :data:`SHIPPED_POLICIES`)."""
    folder = {DEFAULT_POLICY: DEFAULT_POLICY_DIR, ARS_POLICY: ARS_POLICY_DIR, FORMULA_POLICY: FORMULA_POLICY_DIR}[name]
    needed = folder / SHIPPED_POLICIES[name]
    if not needed.is_file():
        raise FileNotFoundError(f"the shipped policy {name!r} is missing its {needed}: reinstall lrenv")
    return folder


def _formula_file(path: str | Path) -> Path | None:
    """The formula file ``path`` names (a formula ``.json``, a folder with a ``formula.json`` and
    no policy), or ``None`` when it names something else."""
    path = Path(path)
    if path.is_dir():
        has_policy = any((path / name).is_file() for name in (RunDir.POLICY, RunDir.WEIGHTS))
        return path / _FORMULA_FILE if not has_policy and (path / _FORMULA_FILE).is_file() else None
    if path.suffix != ".json" or path.name == RunDir.POLICY or not path.is_file():
        return None
    data = read_json(path)
    found = data.get("format") if isinstance(data, dict) else None
    if found == _FORMULA_FORMAT:
        return path
    raise PolicyFileError(
        f"{path} is not a policy: pass a run folder, a checkpoint folder or its {RunDir.POLICY}, or a formula file "
        f"(format {_FORMULA_FORMAT!r}; this file's format is {found!r})"
    )


def _locate(path: Path, trust: bool) -> tuple[Path, Path | None]:
    """``(policy folder, SB3 zip to load or None for lrenv's own files)``, after the trust check."""
    if path.is_dir():
        if (path / RunDir.POLICY).is_file() or (path / RunDir.WEIGHTS).is_file():
            return path, None
        zip_file = path / RunDir.MODEL
        if not zip_file.is_file():
            interrupted = RunDir(path).checkpoints()
            hint = " (the run may have been interrupted before its end: use a folder in checkpoints/, or resume it)" if interrupted else ""
            raise FileNotFoundError(f"no policy at {path}: it has no {RunDir.POLICY} / {RunDir.WEIGHTS}{hint}")
    elif path.name in (RunDir.POLICY, RunDir.WEIGHTS):
        return path.parent, None
    elif not path.is_file():
        raise FileNotFoundError(f"no policy at {path}")
    elif path.suffix != ".zip":
        raise PolicyFileError(f"{path} is not a policy: pass a run folder, a checkpoint folder or its {RunDir.POLICY}")
    else:
        zip_file = path
    if not trust:
        advice = "pass trust=True only for files you made yourself"
        if (zip_file.parent / RunDir.POLICY).is_file():
            advice = f"load the folder {zip_file.parent} instead, whose {RunDir.POLICY} + {RunDir.WEIGHTS} are safe; or {advice}"
        raise UntrustedPolicyError(
            f"{zip_file} is a Stable-Baselines3 model.zip: it holds Python pickles, which run code when they are loaded, "
            f"so lrenv reads it only when told to: {advice}"
        )
    return zip_file.parent, zip_file


def _load_sb3_zip(zip_file: Path, algo: str, device: str) -> Any:
    algo_cls = algorithm_class(algo)
    try:
        return algo_cls.load(zip_file, device=device, custom_objects=_NO_SCHEDULES)
    except Exception as exc:  # SB3 raises anything from ValueError to KeyError on a damaged zip
        raise PolicyFileError(f"{zip_file} could not be loaded as an SB3 {algo} model ({type(exc).__name__}: {exc})") from exc


# -- lrenv's policy files ---------------------------------------------------------------------


def save_policy_files(model: Any, folder: Path) -> None:
    """Write ``policy.json`` and ``policy.safetensors`` for an SB3 algorithm's policy, each atomically.

    Args:
        model: The SB3 algorithm (one of :data:`ALGORITHMS`).
        folder: Where to write them (it must exist).

    Raises:
        PolicyFileError: The policy uses a class outside the allow-lists or a setting JSON cannot
            hold, so it cannot be saved in this format.
    """
    algo = next((name for name, target in ALGORITHMS.items() if target.split(":")[1] == type(model).__name__), None)
    if algo is None:
        raise PolicyFileError(f"cannot save a {type(model).__name__} in lrenv's policy format; it saves {', '.join(ALGORITHMS)}")
    policy = model.policy
    if f"{type(policy).__module__}:{type(policy).__name__}" not in _POLICY_CLASSES[algo]:
        raise PolicyFileError(f"cannot save a {type(policy).__name__} in lrenv's policy format: {algo} saves {_class_names(algo)}")
    params = _constructor_parameters(policy)
    kwargs = {key: _kwarg_to_json(key, value) for key, value in params.items() if key not in _SPACE_ARGS}
    # clone: safetensors refuses tensors that share memory; cpu: the file is device-free
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in policy.state_dict().items()}
    weights = folder / RunDir.WEIGHTS
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp))
        digest = _sha256(tmp)
    import lrenv

    spec = {
        "format": POLICY_FORMAT,
        "lrenv": lrenv.__version__,
        "algo": algo,
        "policy_class": type(policy).__name__,
        "timesteps": int(model.num_timesteps),
        "observation_space": _space_to_json(params["observation_space"], "observation_space"),
        "action_space": _space_to_json(params["action_space"], "action_space"),
        "kwargs": kwargs,
        "weights_sha256": digest,
    }
    with atomic_path(folder / RunDir.POLICY) as tmp:
        tmp.write_text(json.dumps(spec, indent=2, allow_nan=False) + "\n")


def read_policy_files(folder: Path, algo: str, device: str = "cpu") -> tuple[Any, int | None]:
    """Rebuild the SB3 policy saved by :func:`save_policy_files`: allow-listed classes, plain data, no pickles.

    Args:
        folder: The folder holding ``policy.json`` and ``policy.safetensors``.
        algo: The run's algorithm (from its ``config.json``); the policy must be of its class.
        device: Torch device of the network.

    Returns:
        ``(policy, timesteps)``: the SB3 policy in evaluation mode, and the timesteps it was
        trained for (``None`` if not recorded).

    Raises:
        FileNotFoundError: One of the two files is missing.
        PolicyFileError: A file is damaged or does not describe a policy this lrenv can build.
    """
    spec_file, weights_file = folder / RunDir.POLICY, folder / RunDir.WEIGHTS
    for missing, other in ((spec_file, weights_file), (weights_file, spec_file)):
        if not missing.is_file():
            raise FileNotFoundError(f"{missing} is missing (the folder has {other.name}): the policy needs both files")
    spec = require_keys(read_json(spec_file), spec_file, ("format",), "lrenv policy description")
    version = spec["format"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PolicyFileError(f"{spec_file} has format {version!r}, which no lrenv writes: the file is damaged")
    if version != POLICY_FORMAT:
        import lrenv

        raise PolicyFileError(
            f"{spec_file} has format {version}, written by lrenv {spec.get('lrenv', '?')}; this lrenv {lrenv.__version__} reads format "
            f"{POLICY_FORMAT}: install the lrenv that trained the run"
        )
    require_keys(spec, spec_file, _POLICY_KEYS, "lrenv policy description")
    if spec["algo"] != algo:
        raise PolicyFileError(f"{spec_file} is a {spec['algo']!r} policy, but its run's config says the algorithm is {algo!r}")
    timesteps = spec.get("timesteps")
    if timesteps is not None and (not isinstance(timesteps, int) or isinstance(timesteps, bool)):
        raise PolicyFileError(f"{spec_file}: timesteps must be an integer, got {timesteps!r}")
    if _sha256(weights_file) != spec["weights_sha256"]:
        raise PolicyFileError(f"{weights_file} is not the file {spec_file.name} was saved with (SHA-256 differs): damaged, truncated or from another save")
    policy = _build_policy(spec, spec_file, algo, weights_file.stat().st_size)
    try:
        weights = load_file(str(weights_file))
    except Exception as exc:  # safetensors' own SafetensorError, or an OSError
        raise PolicyFileError(f"{weights_file} is not a readable safetensors file ({exc})") from exc
    try:
        policy.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise PolicyFileError(f"{weights_file} does not fit the network {spec_file.name} describes: {exc}") from exc
    policy.set_training_mode(False)
    return policy.to(device), timesteps


def _build_policy(spec: dict[str, Any], spec_file: Path, algo: str, weights_bytes: int) -> Any:
    """A freshly initialised policy of the class, spaces and settings ``spec`` names.

    ``weights_bytes``, the size of the weights file, bounds the network it may build: a
    damaged or hostile ``policy.json`` cannot make it allocate more than its weights could fill.
    """
    if algo not in _POLICY_CLASSES:
        raise PolicyFileError(f"{spec_file}: unknown algorithm {algo!r}; lrenv's policy files hold {', '.join(_POLICY_CLASSES)}")
    allowed = next((target for target in _POLICY_CLASSES[algo] if target.split(":")[1] == spec["policy_class"]), None)
    if allowed is None:
        raise PolicyFileError(f"{spec_file}: policy_class {spec['policy_class']!r} is not allowed for {algo}; it must be {_class_names(algo)}")
    kwargs = spec["kwargs"]
    if not isinstance(kwargs, dict):
        raise PolicyFileError(f"{spec_file}: kwargs must be a JSON object of the policy's constructor arguments, got {kwargs!r}")
    clash = sorted(set(kwargs) & set(_SPACE_ARGS))
    if clash:
        raise PolicyFileError(f"{spec_file}: kwargs must not set {', '.join(clash)} (the file stores the spaces on their own)")
    kwargs = {key: _kwarg_from_json(key, value, spec_file) for key, value in kwargs.items()}
    spaces = {key: _space_from_json(spec[key], spec_file, key) for key in ("observation_space", "action_space")}
    least = _fewest_weights(kwargs, int(np.prod(spaces["observation_space"].shape)), spec_file)
    if least > weights_bytes:
        raise PolicyFileError(f"{spec_file} describes a network of at least {least} weights, more than its {weights_bytes}-byte weights file holds")
    policy_cls = _import(allowed, algo)
    # the constructor initialises weights from torch's global RNG: leave the caller's stream as it was
    with torch.random.fork_rng(devices=[]):
        try:
            schedule = {} if algo in _NO_LR_SCHEDULE else {"lr_schedule": _zero_schedule}
            return policy_cls(**spaces, **schedule, **kwargs)
        except Exception as exc:  # any argument SB3 rejects, whatever it raises
            raise PolicyFileError(f"{spec_file}: its settings do not build a {spec['policy_class']} ({type(exc).__name__}: {exc})") from exc


def _class_names(algo: str) -> str:
    return " or ".join(target.split(":")[1] for target in _POLICY_CLASSES[algo])


def _constructor_parameters(policy: Any) -> dict[str, Any]:
    """What rebuilds ``policy``: SB3's constructor parameters, completed where they fall short.

    ARS policies leave out ``with_bias`` and ``squash_output`` (and the linear one takes no
    ``net_arch`` or ``activation_fn``): read them off the network instead.
    """
    params = dict(policy._get_constructor_parameters())
    name = type(policy).__name__
    if name in ("ARSPolicy", "ARSLinearPolicy"):
        params["with_bias"] = any(key.endswith("bias") for key in policy.state_dict())
        params["squash_output"] = bool(policy.squash_output)
        if name == "ARSLinearPolicy":
            params.pop("net_arch", None)
            params.pop("activation_fn", None)
    return params


def _fewest_weights(kwargs: dict[str, Any], n_obs: int, spec_file: Path) -> int:
    """A lower bound on the parameters of the network ``kwargs`` describe (every one takes at least a byte).

    Each hidden-layer list of ``net_arch`` is built at least once, from the observation on; each
    of ``n_critics`` critics and ``n_quantiles`` outputs has a weight of its own.
    """
    arch = kwargs.get("net_arch")
    lists = list(arch.values()) if isinstance(arch, dict) else [arch] if arch is not None else []
    least = 0
    for widths in lists:
        if not isinstance(widths, list) or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
            raise PolicyFileError(f"{spec_file}: net_arch must hold lists of positive layer widths, got {arch!r}")
        least = max(least, sum(a * b for a, b in zip([n_obs, *widths], widths)))
    for key in ("n_critics", "n_quantiles"):
        count = kwargs.get(key, 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise PolicyFileError(f"{spec_file}: {key} must be a positive integer, got {count!r}")
        least = max(least, count)
    return least


def _zero_schedule(_: float) -> float:
    # the policy's own optimizer is never stepped after loading: any constant learning rate does
    return 0.0


def _kwarg_to_json(key: str, value: Any) -> Any:
    if key in _CLASS_KWARGS:
        name = getattr(value, "__name__", None)
        if name not in _CLASS_KWARGS[key] or _import(_CLASS_KWARGS[key][name], "") is not value:
            raise PolicyFileError(f"cannot save {key}={value!r} in lrenv's policy format; allowed: {', '.join(_CLASS_KWARGS[key])}")
        return name
    try:
        return json.loads(json.dumps(value, allow_nan=False))  # tuples become lists; anything else fails here
    except (TypeError, ValueError) as exc:
        raise PolicyFileError(f"cannot save the policy argument {key}={value!r} in lrenv's policy format (JSON): {exc}") from exc


def _kwarg_from_json(key: str, value: Any, spec_file: Path) -> Any:
    if key not in _CLASS_KWARGS:
        return value
    if not isinstance(value, str) or value not in _CLASS_KWARGS[key]:
        raise PolicyFileError(f"{spec_file}: {key} {value!r} is not allowed; choose one of {', '.join(_CLASS_KWARGS[key])}")
    return _import(_CLASS_KWARGS[key][value], "")


def _space_to_json(space: Any, what: str) -> dict[str, Any]:
    from gymnasium import spaces

    if type(space) is not spaces.Box or str(space.dtype) not in _DTYPES:
        raise PolicyFileError(f"cannot save the {what} {space} in lrenv's policy format: it holds float Box spaces only")

    def floats(a: np.ndarray) -> list[Any]:
        # JSON has no infinity: unbounded observations are stored as the strings "inf" / "-inf"
        return [float(x) if np.isfinite(x) else str(float(x)) for x in a.ravel()]

    return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype), "low": floats(space.low), "high": floats(space.high)}


def _space_from_json(data: Any, spec_file: Path, what: str) -> Any:
    from gymnasium import spaces

    where = f"{spec_file}: {what}"
    data = require_keys(data, spec_file, ("type", "shape", "dtype", "low", "high"), f"lrenv policy description ({what})")
    shape = data["shape"]
    if data["type"] != "Box" or data["dtype"] not in _DTYPES:
        raise PolicyFileError(f"{where} must be a Box of {' or '.join(_DTYPES)}, got {data['type']!r} of {data['dtype']!r}")
    if not isinstance(shape, list) or not shape or not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 1_000_000 for n in shape):
        raise PolicyFileError(f"{where}: shape must be a list of positive integers, got {shape!r}")
    bounds = []
    for key in ("low", "high"):
        values = data[key]
        if not isinstance(values, list) or len(values) != int(np.prod(shape)):
            raise PolicyFileError(f"{where}: {key} must list {int(np.prod(shape))} numbers, got {values!r}")
        if not all(v in ("inf", "-inf") or (isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)) for v in values):
            raise PolicyFileError(f"{where}: {key} must hold numbers (or \"inf\" / \"-inf\"), got {values!r}")
        bounds.append(np.array([float(v) for v in values], dtype=data["dtype"]).reshape(shape))
    if np.any(bounds[0] > bounds[1]):
        raise PolicyFileError(f"{where}: low exceeds high")
    return spaces.Box(bounds[0], bounds[1], tuple(shape), dtype=data["dtype"])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

