"""Train an SB3 agent to choose learning rates, and write everything about the run to one folder.

Usage::

    python -m agents.train --algo ppo --task MNIST1D-MLP-v0
    python -m agents.train --algo sac --task Digits-MLP-v0 --timesteps 5000 --set env.task_config.epochs=10
    python -m agents.train --algo ppo --task MNIST1D-MLP-v0 Digits-MLP-v0      # one policy, several tasks
    python -m agents.train --config my_ppo.yaml --track                         # a copied config, W&B
    python -m agents.train --resume runs/<run>                                  # after an interruption

Defaults per algorithm live in ``agents/configs/<algo>.yaml``; ``--config FILE`` replaces
that file, named options (``--timesteps``, ``--n-envs``, ...) override it and ``--set KEY=VALUE``
overrides any key (dotted: ``hyperparams.learning_rate=3e-4``, ``env.features=minimal``).

The run folder ``runs/<task>__<algo>__<seed>__<time>/`` holds ``config.json`` (the full
resolved config), ``model.zip`` (the final policy), ``normalization.json`` and
``vecnormalize.pkl`` (observation statistics), ``checkpoints/step_<N>/`` (periodic,
written atomically; off-policy ones with the replay buffer), ``progress.csv`` (SB3's
training metrics), ``episodes.jsonl`` (every training episode: final losses, LR schedule),
``eval.json`` and ``schedule.png`` (evaluation episodes of the policy and of the task's
default constant LR on fresh seeds) and, with ``--track``, ``wandb/``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2-core machines: torch's own threads make RL ~10x slower

import argparse
import copy
import dataclasses
import importlib.util
import inspect
import json
import platform
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import CSVOutputFormat, HumanOutputFormat, Logger
from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecMonitor, VecNormalize

from agents.cli import dataclass_parser
import lrenv
from lrenv.policy import ALGORITHMS, CONFIG_FILE, MODEL_FILE, NORMALIZATION_FILE, LoadedPolicy, ObsNormalization, algorithm_class, load_policy

CONFIG_DIR = Path(__file__).parent / "configs"
VECNORMALIZE_FILE = "vecnormalize.pkl"
REPLAY_BUFFER_FILE = "replay_buffer.pkl"
CHECKPOINTS = "checkpoints"
EPISODES_FILE = "episodes.jsonl"
EVAL_FILE = "eval.json"
PLOT_FILE = "schedule.png"
#: Evaluation run seeds: fixed and far from training's, so every run is compared on the same episodes.
EVAL_SEED = 1_000_000

#: Keys of a config file (see agents/configs/ppo.yaml).
CONFIG_KEYS = ("algo", "timesteps", "n_envs", "vec_env", "normalize_obs", "clip_obs", "checkpoint_freq", "eval_episodes", "env", "policy", "hyperparams")
VEC_ENVS = ("auto", "batched", "dummy")
#: LREnv keyword arguments a config may set (the task comes from --task, seeds from --seed).
ENV_KEYS = tuple(p for p in inspect.signature(lrenv.LREnv.__init__).parameters if p not in ("self", "task", "seed", "render_mode", "unknown"))
#: Algorithm arguments the script sets itself.
RESERVED_HYPERPARAMS = ("self", "policy", "env", "seed", "device", "verbose", "tensorboard_log", "_init_setup_model", "kwargs")
ACTIVATIONS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "elu": torch.nn.ELU, "leaky_relu": torch.nn.LeakyReLU, "gelu": torch.nn.GELU, "silu": torch.nn.SiLU}


@dataclass
class Args:
    algo: str | None = field(default=None, metadata={"help": f"algorithm: {', '.join(ALGORITHMS)} (default: the config file's, else ppo)"})
    task: list[str] = field(default_factory=lambda: ["MNIST1D-MLP-v0"], metadata={"metavar": "TASK", "help": "one task name, or several for one multi-task policy"})
    timesteps: int | None = field(default=None, metadata={"help": "total agent steps (inner epochs over all envs); default: the config's"})
    seed: int = field(default=0, metadata={"help": "seed of the agent and the envs"})
    n_envs: int | None = field(default=None, metadata={"help": "parallel envs; default: the config's"})
    config: str | None = field(default=None, metadata={"metavar": "FILE", "help": "a YAML/JSON config file to use instead of agents/configs/<algo>.yaml"})
    set: list[str] = field(default_factory=list, metadata={"metavar": "KEY=VALUE", "help": "override config keys: KEY=VALUE ... (dotted keys, YAML values)"})
    runs_dir: str = field(default="runs", metadata={"metavar": "DIR", "help": "parent folder of the run folders"})
    resume: str | None = field(default=None, metadata={"metavar": "RUN_DIR", "help": "continue the run in this folder from its last checkpoint"})
    checkpoint_freq: int | None = field(default=None, metadata={"help": "timesteps between checkpoints; default: the config's"})
    eval_episodes: int | None = field(default=None, metadata={"help": "evaluation episodes per task at the end; default: the config's"})
    device: str = field(default="cpu", metadata={"help": "torch device of the agent's networks (the inner runs use env.device)"})
    progress_bar: bool = field(default=True, metadata={"help": "show SB3's progress bar"})
    verbose: int = field(default=0, metadata={"help": "SB3 verbosity (1 prints its training tables)"})
    track: bool = field(default=False, metadata={"help": "track the run with Weights & Biases (offline unless logged in)"})
    wandb_project: str = field(default="lrenv", metadata={"help": "W&B project"})
    wandb_entity: str | None = field(default=None, metadata={"help": "W&B entity (user or team)"})
    wandb_init_timeout: float = field(default=15.0, metadata={"help": "seconds to wait for the W&B server before going offline"})


def parse_args(argv: list[str] | None = None) -> tuple[Args, argparse.ArgumentParser]:
    parser = dataclass_parser(Args, "python -m agents.train", __doc__.split("\n\n")[0])
    return Args(**vars(parser.parse_args(argv))), parser


# -- configuration -------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A YAML value; also numbers YAML 1.1 reads as strings, such as ``3e-4``."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON: both work
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of {', '.join(CONFIG_KEYS)}")
    return data


def allowed_hyperparams(algo_cls: type) -> list[str]:
    return [p for p in inspect.signature(algo_cls.__init__).parameters if p not in RESERVED_HYPERPARAMS]


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


def validate_config(config: dict[str, Any]) -> None:
    """Unknown keys anywhere we can check are errors that list what is allowed."""
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(unknown)}; allowed: {', '.join(CONFIG_KEYS)}")
    algo_cls = algorithm_class(config["algo"])
    unknown = sorted(set(config.get("env") or {}) - set(ENV_KEYS))
    if unknown:
        raise ValueError(f"unknown env key(s) {', '.join(unknown)}; allowed: {', '.join(ENV_KEYS)}")
    allowed = allowed_hyperparams(algo_cls)
    unknown = sorted(set(config.get("hyperparams") or {}) - set(allowed))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {', '.join(unknown)} for {config['algo']}; allowed: {', '.join(allowed)}")
    if config.get("vec_env", "auto") not in VEC_ENVS:
        raise ValueError(f"unknown vec_env {config['vec_env']!r}; choose one of {', '.join(VEC_ENVS)}")
    for key in ("timesteps", "n_envs", "checkpoint_freq"):
        if not isinstance(config.get(key), int) or config[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {config.get(key)!r}")
    if not isinstance(config.get("eval_episodes"), int) or config["eval_episodes"] < 0:
        raise ValueError(f"eval_episodes must be an integer >= 0, got {config.get('eval_episodes')!r}")


def resolve_config(args: Args) -> dict[str, Any]:
    """Config file < named options < --set; validated, with the tasks' resolved settings."""
    if args.config:
        config = read_config_file(Path(args.config))
        algo = (args.algo or config.get("algo") or "ppo").lower()
    else:
        algo = (args.algo or "ppo").lower()
        algorithm_class(algo)  # unknown --algo: a clear error before looking for its file
        config = read_config_file(CONFIG_DIR / f"{algo}.yaml")
    config["algo"] = algo
    for key in ("timesteps", "n_envs", "checkpoint_freq", "eval_episodes"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    for assignment in args.set:
        set_key(config, assignment)
    config["algo"] = str(config["algo"]).lower()
    config.setdefault("env", {})
    config.setdefault("hyperparams", {})
    config.setdefault("policy", "MlpPolicy")
    config.setdefault("vec_env", "auto")
    config.setdefault("normalize_obs", True)
    config.setdefault("clip_obs", 10.0)
    validate_config(config)
    task_config = config["env"].get("task_config") or {}
    tasks = [lrenv.make_task(name, **task_config) for name in args.task]  # unknown names list the registered ones
    config["tasks"] = [t.name for t in tasks]
    config["task_configs"] = {t.name: dataclasses.asdict(t.config) for t in tasks}
    config["seed"] = args.seed
    config["device"] = args.device
    config["name"] = f"{algo}-{'+'.join(config['tasks'])}-s{args.seed}"
    config["versions"] = versions()
    return config


def versions() -> dict[str, str]:
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


def build_hyperparams(config: dict[str, Any]) -> dict[str, Any]:
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
        kinds = {"normal": NormalActionNoise, "ornstein_uhlenbeck": OrnsteinUhlenbeckActionNoise}
        kind = noise.get("type", "normal")
        if kind not in kinds:
            raise ValueError(f"unknown action_noise type {kind!r}; choose one of {', '.join(kinds)}")
        hp["action_noise"] = kinds[kind](mean=np.zeros(1), sigma=float(noise.get("sigma", 0.1)) * np.ones(1))
    return hp


# -- environments --------------------------------------------------------------------------


def make_vec_env(config: dict[str, Any], seed: int) -> tuple[VecEnv, str]:
    """The training VecEnv (monitored, normalised if configured) and which kind it is."""
    env_kwargs = dict(config["env"])
    tasks, n_envs, kind = config["tasks"], config["n_envs"], config["vec_env"]
    venv: VecEnv | None = None
    if kind in ("auto", "batched") and len(tasks) == 1:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            venv = lrenv.BatchedVecEnv(tasks[0], n_envs, seed=seed, **env_kwargs)
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
        venv = DummyVecEnv([lambda: lrenv.LREnv(spec, **env_kwargs) for _ in range(n_envs)])
        venv.seed(seed)
        kind = "dummy"
    venv = VecMonitor(venv)
    if config["normalize_obs"]:
        gamma = float(config["hyperparams"].get("gamma", 0.99))
        venv = VecNormalize(venv, norm_obs=True, norm_reward=False, clip_obs=float(config["clip_obs"]), gamma=gamma)
    return venv, kind


def find_vec_normalize(venv: VecEnv) -> VecNormalize | None:
    while venv is not None:
        if isinstance(venv, VecNormalize):
            return venv
        venv = getattr(venv, "venv", None)
    return None


# -- saving --------------------------------------------------------------------------------


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a reader (or a crash) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def save_policy(model: BaseAlgorithm, venv: VecEnv, folder: Path, replay_buffer: bool = False) -> None:
    """model.zip, observation statistics (JSON and SB3 pickle), optionally the replay buffer."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / MODEL_FILE)
    vec_normalize = find_vec_normalize(venv)
    if vec_normalize is not None:
        vec_normalize.save(str(folder / VECNORMALIZE_FILE))
        write_json(folder / NORMALIZATION_FILE, ObsNormalization.from_vec_normalize(vec_normalize).to_dict())
    if replay_buffer and isinstance(model, OffPolicyAlgorithm):
        model.save_replay_buffer(folder / REPLAY_BUFFER_FILE)


def save_checkpoint(model: BaseAlgorithm, venv: VecEnv, run_dir: Path) -> Path:
    """``checkpoints/step_<N>/``, built in a temporary folder and renamed into place."""
    root = run_dir / CHECKPOINTS
    final = root / f"step_{model.num_timesteps:09d}"
    tmp = root / f".tmp_{final.name}"
    for stale in root.glob(".tmp_*"):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    save_policy(model, venv, tmp, replay_buffer=True)
    write_json(tmp / "state.json", {"timesteps": model.num_timesteps, "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for older in checkpoints(run_dir)[:-1]:  # replay buffers are big: keep the latest only
        (older / REPLAY_BUFFER_FILE).unlink(missing_ok=True)
    return final


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = run_dir / CHECKPOINTS
    return sorted(p for p in root.glob("step_*") if p.is_dir()) if root.is_dir() else []


def save_final(model: BaseAlgorithm, venv: VecEnv, run_dir: Path) -> None:
    """The final policy files in the run folder, each moved into place atomically."""
    tmp = run_dir / ".tmp_final"
    shutil.rmtree(tmp, ignore_errors=True)
    save_policy(model, venv, tmp)
    for f in tmp.iterdir():
        os.replace(f, run_dir / f.name)
    tmp.rmdir()


# -- callbacks -----------------------------------------------------------------------------


class EpisodeRecorder(BaseCallback):
    """Writes every finished training episode (final losses, LR schedule) to episodes.jsonl and W&B."""

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
                values = {
                    "episode/final_valid_loss": record["final_valid_loss"],
                    "episode/return": record["return"],
                    "episode/epochs": record["epochs"],
                    "episode/diverged": int(record["diverged"]),
                    "episode/final_lr": record["lr"][-1],
                    "episode/mean_log10_lr": float(np.mean(np.log10(record["lr"]))),
                }
                if record["final_valid_accuracy"] is not None:
                    values["episode/final_valid_accuracy"] = record["final_valid_accuracy"]
                self.tracker.log({k: v for k, v in values.items() if v is not None}, self.num_timesteps)
        if wrote:
            self._file.flush()
        return True

    def _on_training_end(self) -> None:
        self._file.close()


class CheckpointEvery(BaseCallback):
    """Saves a checkpoint every ``freq`` timesteps (see :func:`save_checkpoint`)."""

    def __init__(self, run_dir: Path, freq: int, tracker: Any = None) -> None:
        super().__init__()
        self.run_dir, self.freq, self.tracker = run_dir, freq, tracker

    def _on_training_start(self) -> None:
        self._last = self.num_timesteps

    def _on_step(self) -> bool:
        if self.num_timesteps - self._last >= self.freq:
            self._last = self.num_timesteps
            save_checkpoint(self.model, self.training_env, self.run_dir)
            if self.tracker is not None:
                self.tracker.log({"checkpoint/timesteps": self.num_timesteps}, self.num_timesteps)
        return True


# -- evaluation ----------------------------------------------------------------------------


def run_eval_episode(env: lrenv.LREnv, seed: int, task: str, act) -> dict[str, Any]:
    """One episode; ``act(obs, info)`` returns the action."""
    options = {"task": task} if len(env.tasks) > 1 else None
    obs, info = env.reset(seed=seed, options=options)
    curve, total, done = [], 0.0, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(act(obs, info))
        curve.append((info["lr"], info["train_loss"], info["valid_loss"]))
        total += reward
        done = terminated or truncated
    return {"seed": seed, "return": total, **episode_summary(info, curve)}


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


def summarise(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    loss = np.array([e["final_valid_loss"] for e in episodes if not e["diverged"]])
    acc = [e["final_valid_accuracy"] for e in episodes if not e["diverged"] and e["final_valid_accuracy"] is not None]
    return {
        "final_valid_loss_mean": float(loss.mean()) if len(loss) else None,
        "final_valid_loss_std": float(loss.std()) if len(loss) else None,
        "final_valid_accuracy_mean": float(np.mean(acc)) if acc else None,
        "return_mean": float(np.mean([e["return"] for e in episodes])),
        "diverged": int(sum(e["diverged"] for e in episodes)),
        "episodes": len(episodes),
    }


def evaluate(policy: LoadedPolicy, config: dict[str, Any], episodes: int) -> dict[str, Any]:
    """The policy and the task's default constant LR on the same fresh seeds, per task."""
    env = lrenv.LREnv(config["tasks"], **config["env"])
    results: dict[str, Any] = {}
    for task in config["tasks"]:
        seeds = [EVAL_SEED + i for i in range(episodes)]

        def constant(obs, info, task=task):
            cfg = env.task.config
            return env.actions.to_action(np.array([cfg.default_lr]), np.array([info["lr"]]), np.array([cfg.lr_range]))[0]

        learned = [run_eval_episode(env, s, task, lambda obs, info: policy.predict(obs[None])[0]) for s in seeds]
        default = [run_eval_episode(env, s, task, constant) for s in seeds]
        results[task] = {
            "policy": summarise(learned),
            "default_constant": summarise(default),
            "default_lr": env.task.config.default_lr,
            "seeds": seeds,
            "policy_episodes": learned,
            "default_constant_episodes": default,
        }
    env.close()
    return results


def plot_eval(results: dict[str, Any], path: Path, title: str) -> None:
    """LR schedules and loss curves of the evaluation episodes (policy solid, default constant dashed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4), dpi=90)
    FigureCanvasAgg(fig)
    ax_lr, ax_valid, ax_train = fig.subplots(1, 3)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for i, (task, res) in enumerate(results.items()):
        color = colors[i % len(colors)]
        for kind, style, alpha in (("policy_episodes", "-", 0.6), ("default_constant_episodes", "--", 0.35)):
            for j, ep in enumerate(res[kind]):
                epochs = np.arange(1, len(ep["lr"]) + 1)
                label = None
                if j == 0:
                    summary = res[kind.replace("_episodes", "")]
                    mean = summary["final_valid_loss_mean"]
                    name = "policy" if kind == "policy_episodes" else f"constant {res['default_lr']:g}"
                    label = f"{task} {name}" + (f" ({mean:.3f})" if mean is not None else "")
                ax_lr.semilogy(epochs, ep["lr"], style, color=color, alpha=alpha, label=label)
                ax_valid.semilogy(epochs, ep["valid_loss"], style, color=color, alpha=alpha, label=label)
                ax_train.semilogy(epochs, ep["train_loss"], style, color=color, alpha=alpha)
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="LR schedule")
    ax_valid.set(xlabel="epoch", title="validation loss (final mean in legend)")
    ax_train.set(xlabel="epoch", title="train loss")
    ax_valid.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)


# -- the run -------------------------------------------------------------------------------


def new_run_dir(config: dict[str, Any], runs_dir: Path) -> Path:
    label = "+".join(config["tasks"]) if len(config["tasks"]) <= 3 else f"{len(config['tasks'])}tasks"
    base = f"{label}__{config['algo']}__{config['seed']}__{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, k = runs_dir / base, 1
    while run_dir.exists():
        k += 1
        run_dir = runs_dir / f"{base}-{k}"
    run_dir.mkdir(parents=True)
    return run_dir


def make_logger(run_dir: Path, verbose: int, tracker: Any) -> Logger:
    csv, k = run_dir / "progress.csv", 1
    while csv.exists():  # a resumed run must not overwrite the metrics of its first part
        k += 1
        csv = run_dir / f"progress_{k}.csv"
    formats = [CSVOutputFormat(str(csv))]
    if verbose:
        formats.append(HumanOutputFormat(sys.stdout))
    if tracker is not None:
        formats.append(tracker.sb3_output())
    return Logger(folder=str(run_dir), output_formats=formats)


def start_tracking(args: Args, config: dict[str, Any], run_dir: Path) -> Any:
    from lrenv.tracking import start_wandb

    # a resumed run keeps its W&B project and run id
    wandb_config = config.setdefault("wandb", {"project": args.wandb_project, "entity": args.wandb_entity})
    tracker = start_wandb(
        {k: v for k, v in config.items() if k != "wandb"},
        project=wandb_config["project"],
        entity=wandb_config["entity"],
        name=run_dir.name,
        folder=run_dir,
        run_id=wandb_config.get("id"),
        tags=[config["algo"], *config["tasks"]],
        init_timeout=args.wandb_init_timeout,
    )
    wandb_config["id"] = tracker.id
    print(f"W&B: tracking {tracker.mode} in {tracker.folder}")
    return tracker


def finish_tracking(tracker: Any, config: dict[str, Any], run_dir: Path, results: dict[str, Any], timesteps: int) -> None:
    """Evaluation results, episode curves and the policy artifact to W&B."""
    values, rows = {}, []
    for task, res in results.items():
        for kind in ("policy", "default_constant"):
            for key, value in res[kind].items():
                if value is not None:
                    values[f"eval/{task}/{kind}/{key}"] = value
            for ep in res[f"{kind}_episodes"]:
                for epoch, (lr, train, valid) in enumerate(zip(ep["lr"], ep["train_loss"], ep["valid_loss"]), 1):
                    rows.append([task, kind, ep["seed"], epoch, lr, train, valid])
    if values:
        tracker.log(values, timesteps)
        tracker.summary(values)
    if rows:
        tracker.table("eval/curves", ["task", "schedule", "seed", "epoch", "lr", "train_loss", "valid_loss"], rows, timesteps)
    if (run_dir / PLOT_FILE).is_file():
        tracker.image("eval/schedule", run_dir / PLOT_FILE, timesteps)
    episodes_file = run_dir / EPISODES_FILE
    if episodes_file.is_file():
        lines = episodes_file.read_text().splitlines()[-20000:]  # W&B tables stay small; the file has them all
        episode_rows = []
        for line in lines:
            e = json.loads(line)
            episode_rows.append([e["timesteps"], e["task"], e["run_seed"], e["return"], e["final_valid_loss"], e["final_valid_accuracy"], e["diverged"], json.dumps(e["lr"]), json.dumps(e["valid_loss"])])
        if episode_rows:
            tracker.table("episode/curves", ["timesteps", "task", "run_seed", "return", "final_valid_loss", "final_valid_accuracy", "diverged", "lr", "valid_loss"], episode_rows, timesteps)
    files = [run_dir / f for f in (MODEL_FILE, CONFIG_FILE, NORMALIZATION_FILE, VECNORMALIZE_FILE, EVAL_FILE, PLOT_FILE, EPISODES_FILE)]
    tracker.log_artifact(f"policy-{config['name']}", "model", files, metadata={"algo": config["algo"], "tasks": config["tasks"], "timesteps": timesteps})


def main(argv: list[str] | None = None) -> Path:
    """Train (or resume) a run; returns its folder."""
    torch.set_num_threads(1)
    args, parser = parse_args(argv)
    try:
        if args.resume:
            run_dir = Path(args.resume)
            if not (run_dir / CONFIG_FILE).is_file():
                raise ValueError(f"--resume {run_dir}: no {CONFIG_FILE} there; pass a run folder written by agents.train")
            config = json.loads((run_dir / CONFIG_FILE).read_text())
            if args.timesteps is not None:
                config["timesteps"] = args.timesteps
            resume_from = checkpoints(run_dir)[-1] if checkpoints(run_dir) else None
            if resume_from is None:
                raise ValueError(f"--resume {run_dir}: it has no checkpoint yet; start a new run instead")
        else:
            config = resolve_config(args)
            resume_from = None
        algo_cls = algorithm_class(config["algo"])
        hyperparams = build_hyperparams(config)
        if args.track and importlib.util.find_spec("wandb") is None:
            raise ImportError('--track needs wandb: pip install "lrenv[wandb]" (or pip install wandb)')
    except (ValueError, TypeError, KeyError, ImportError) as exc:
        parser.error(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))

    if resume_from is None:
        run_dir = new_run_dir(config, Path(args.runs_dir))
        config["run_dir"] = str(run_dir)
        config["command"] = ["python", "-m", "agents.train", *(sys.argv[1:] if argv is None else argv)]
        config["created"] = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"Run folder: {run_dir}")
    tracker = start_tracking(args, config, run_dir) if args.track else None
    if resume_from is None:
        venv, config["vec_env"] = make_vec_env(config, config["seed"])
        write_json(run_dir / CONFIG_FILE, config)
        model = algo_cls(config["policy"], venv, seed=config["seed"], device=args.device, verbose=args.verbose, **hyperparams)
    else:
        state = json.loads((resume_from / "state.json").read_text())
        # fresh episodes after a resume: seed the envs from the step reached, not the start
        venv, _ = make_vec_env(config, config["seed"] + int(state["timesteps"]))
        if (resume_from / VECNORMALIZE_FILE).is_file():
            venv = VecNormalize.load(str(resume_from / VECNORMALIZE_FILE), venv.venv)
        model = algo_cls.load(resume_from / MODEL_FILE, env=venv, device=args.device)
        if (resume_from / REPLAY_BUFFER_FILE).is_file() and isinstance(model, OffPolicyAlgorithm):
            model.load_replay_buffer(resume_from / REPLAY_BUFFER_FILE)
        write_json(run_dir / CONFIG_FILE, config)
        print(f"Resuming from {resume_from.name} ({model.num_timesteps} of {config['timesteps']} timesteps done)")
    model.set_logger(make_logger(run_dir, args.verbose, tracker))
    callbacks = [EpisodeRecorder(run_dir / EPISODES_FILE, tracker), CheckpointEvery(run_dir, config["checkpoint_freq"], tracker)]

    remaining = config["timesteps"] - model.num_timesteps
    start = time.perf_counter()
    try:
        if remaining > 0:
            model.learn(total_timesteps=remaining, callback=callbacks, reset_num_timesteps=resume_from is None, progress_bar=args.progress_bar)
    except KeyboardInterrupt:
        saved = save_checkpoint(model, venv, run_dir)
        print(f"\nInterrupted at {model.num_timesteps} timesteps; saved {saved}. Continue with: python -m agents.train --resume {run_dir}")
        if tracker is not None:
            tracker.finish(exit_code=1)
        raise SystemExit(130) from None
    train_seconds = time.perf_counter() - start
    save_final(model, venv, run_dir)
    save_checkpoint(model, venv, run_dir)
    print(f"Trained {model.num_timesteps} timesteps in {train_seconds:.0f} s")

    results: dict[str, Any] = {}
    if config["eval_episodes"] > 0:
        policy = load_policy(run_dir)
        results = evaluate(policy, config, config["eval_episodes"])
        write_json(run_dir / EVAL_FILE, {"timesteps": model.num_timesteps, "train_seconds": train_seconds, "tasks": results})
        plot_eval(results, run_dir / PLOT_FILE, f"{config['name']}, {model.num_timesteps} timesteps: evaluation on fresh seeds")
        for task, res in results.items():
            p, c = res["policy"], res["default_constant"]

            def fmt(s: dict[str, Any]) -> str:
                mean = s["final_valid_loss_mean"]
                return ("-" if mean is None else f"{mean:.4f} ± {s['final_valid_loss_std']:.4f}") + (f", {s['diverged']} diverged" if s["diverged"] else "")

            print(f"Eval {task} ({p['episodes']} fresh seed{'s' if p['episodes'] != 1 else ''}), final valid loss: policy {fmt(p)}; default constant LR {res['default_lr']:g} {fmt(c)}")
    if tracker is not None:
        finish_tracking(tracker, config, run_dir, results, model.num_timesteps)
        tracker.finish()
    venv.close()
    print(f"Run folder: {run_dir}")
    return run_dir


if __name__ == "__main__":
    main()
