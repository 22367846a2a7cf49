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

The run folder ``runs/<task>__<algo>__<seed>__<time>/`` (layout: :class:`lrenv.run_dir.RunDir`)
holds ``config.json`` (the full resolved config), ``policy.json`` + ``policy.safetensors`` (the
final policy as plain data, what :func:`lrenv.load_policy` reads), ``model.zip`` (the same in
SB3's format, for resuming),
``normalization.json`` and ``vecnormalize.pkl`` (observation statistics),
``checkpoints/step_<N>/`` (periodic, written atomically; off-policy ones with the replay
buffer), ``progress.csv`` (SB3's training metrics), ``episodes.jsonl`` (every training episode:
final losses, LR schedule), ``reference_returns.json`` (the return of the tuned baselines of
``reference_baselines`` on each training population's env, see :func:`reference_returns`),
``learning.png`` (training and validation return against timesteps, beside those references),
``eval.json`` and ``schedule.png`` (evaluation episodes of the
policy and of the task's default constant LR on fresh seeds) and, with ``--track``, ``wandb/``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2-core machines: torch's own threads make RL ~10x slower

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.logger import CSVOutputFormat, HumanOutputFormat, Logger
from stable_baselines3.common.vec_env import unwrap_vec_wrapper

from lrenv.agents.args import dataclass_parser
from lrenv.agents.callbacks import CheckpointEvery, EpisodeRecorder, KeepBest
from lrenv.agents.config import OPTION_KEYS, build_hyperparams, env_config, reference_baselines, resolve_config
from lrenv.agents.vec_env import env_labels, make_validation_env, make_vec_env
from lrenv.engine import resolve_device
from lrenv.env.config import EnvConfig
from lrenv.env.mixture import NewDrawEachRollout, PairedSeeds
from lrenv.evaluation import DEFAULT_EVAL_SEEDS, DEFAULT_TRIALS, DEFAULT_TUNE_SEEDS, compare, default_cache_dir
from lrenv.evaluation.protocol import Job, PolicyRef, Slot
from lrenv.evaluation.runner import Episode, run_job
from lrenv.policy import ALGORITHMS, LoadedPolicy, algorithm_class, load_policy
from lrenv.registry import make_task, registered_source
from lrenv.run_dir import PolicyFileError, RunDir, write_json

#: Evaluation env seeds: fixed and far from training's, so every run is compared on the same episodes.
EVAL_SEED = 1_000_000
#: Validation env seeds (KeepBest): fixed for the whole run, apart from training's and evaluation's.
VALIDATION_SEED = 2_000_000
#: The tuned baselines' returns on each training population's env (:func:`reference_returns`).
REFERENCE_FILE = "reference_returns.json"
#: Drawn dotted beside the best tuned baseline: the schedule most training loops use.
REFERENCE_COSINE = "cosine"
#: Below this many inner epochs the reference comparison runs in this process: spawning workers would cost more.
REFERENCE_WORKER_EPOCHS = 5000


@dataclass
class Args:
    algo: str | None = field(default=None, metadata={"help": f"algorithm: {', '.join(ALGORITHMS)} (default: the config file's, else ppo)"})
    task: list[str] = field(
        default_factory=lambda: ["MNIST1D-MLP-v0"], metadata={"metavar": "TASK", "help": "one task name, or several for one multi-task policy"}
    )
    timesteps: int | None = field(default=None, metadata={"help": "total agent steps (inner epochs over all envs); default: the config's"})
    seed: int = field(default=0, metadata={"help": "seed of the agent and the envs"})
    n_envs: int | None = field(default=None, metadata={"help": "parallel envs; default: the config's"})
    config: str | None = field(default=None, metadata={"metavar": "FILE", "help": "a YAML/JSON config file to use instead of agents/configs/<algo>.yaml"})
    set: list[str] = field(default_factory=list, metadata={"metavar": "KEY=VALUE", "help": "override config keys: KEY=VALUE ... (dotted keys, YAML values)"})
    runs_dir: str = field(default="runs", metadata={"metavar": "DIR", "help": "parent folder of the run folders"})
    resume: str | None = field(default=None, metadata={"metavar": "RUN_DIR", "help": "continue the run in this folder from its last checkpoint"})
    checkpoint_freq: int | None = field(default=None, metadata={"help": "timesteps between checkpoints; default: the config's"})
    ray_actors: int | None = field(default=None, metadata={"help": "shard the envs over this many Ray actors (0: this process); default: the config's"})
    address: str | None = field(default=None, metadata={"help": "Ray cluster of --ray-actors (default: $RAY_ADDRESS, else a local one)"})
    gpus_per_actor: float = field(default=0.0, metadata={"help": "GPUs each --ray-actors actor declares; a fraction shares one (0.25: four actors)"})
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


def main(argv: list[str] | None = None) -> Path:
    """Train (or resume) a run; returns its folder."""
    torch.set_num_threads(1)
    args, parser = parse_args(argv)
    try:  # every mistake in the input is reported before a run folder exists
        run, config, checkpoint = read_resume(args) if args.resume else (None, new_config(args), None)
        algo_cls = algorithm_class(config["algo"])
        hyperparams = build_hyperparams(config)
        env = env_config(config, source=str(run.config_file) if run else "the env section of the config")
        if args.track and importlib.util.find_spec("wandb") is None:
            raise ImportError('--track needs wandb: pip install "lrenv[wandb]" (or pip install wandb)')
    except (ValueError, TypeError, KeyError, ImportError) as exc:
        parser.error(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))

    # where this session's cluster is, and how much of a GPU each actor takes there
    config["ray_address"] = args.address or os.environ.get("RAY_ADDRESS") or None
    config["ray_gpus_per_actor"] = args.gpus_per_actor
    if run is None:
        run = RunDir.create(args.runs_dir, config["tasks"], config["algo"], config["seed"])
        config["run_dir"] = str(run.path)
        config["command"] = ["python", "-m", "agents.train", *(sys.argv[1:] if argv is None else argv)]
        config["created"] = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"Run folder: {run.path}")
    tracker = start_tracking(args, config, run) if args.track else None
    if checkpoint is None:
        venv, config["vec_env"] = make_vec_env(config, env, config["seed"])
        run.write_config(config)
        model = algo_cls(config["policy"], venv, seed=config["seed"], device=args.device, verbose=args.verbose, **hyperparams)
    else:
        # fresh episodes after a resume: seed the envs from the step reached, not the start
        try:
            reached = RunDir.checkpoint_timesteps(checkpoint)
            venv, _ = make_vec_env(config, env, config["seed"] + reached)
            model, venv = run.load_checkpoint(checkpoint, algo_cls, venv, args.device)
        except (PolicyFileError, FileNotFoundError) as exc:  # a damaged checkpoint: say which file, no traceback
            if tracker is not None:
                tracker.finish(exit_code=1)
            parser.error(str(exc))
        run.write_config(config)
        # what was logged after the checkpoint is trained again now: keep each episode once
        if dropped := run.rewind_logs(reached):
            print(f"Dropped {dropped} log records of timesteps after {checkpoint.name}: they are trained again")
        print(f"Resuming from {checkpoint.name} ({model.num_timesteps} of {config['timesteps']} timesteps done)")
    model.set_logger(make_logger(run, args.verbose, tracker))
    callbacks = make_callbacks(config, run, venv, env, tracker)

    remaining = config["timesteps"] - model.num_timesteps
    start = time.perf_counter()
    try:
        if remaining > 0:
            model.learn(total_timesteps=remaining, callback=callbacks, reset_num_timesteps=checkpoint is None, progress_bar=args.progress_bar)
    except KeyboardInterrupt:
        saved = run.save_checkpoint(model, venv)
        print(f"\nInterrupted at {model.num_timesteps} timesteps; saved {saved}. Continue with: python -m agents.train --resume {run.path}")
        if tracker is not None:
            tracker.finish(exit_code=1)
        raise SystemExit(130) from None
    train_seconds = time.perf_counter() - start
    run.save_final(model, venv)
    run.save_checkpoint(model, venv)
    print(f"Trained {model.num_timesteps} timesteps in {train_seconds:.0f} s")
    reference = write_reference(run, config, env, args.progress_bar)
    keep_best(run, config)

    results: dict[str, Any] = {}
    if config["eval_episodes"] > 0:
        results = evaluate(load_policy(run.path), config, env, config["eval_episodes"])
        run.write_eval({"timesteps": model.num_timesteps, "train_seconds": train_seconds, "tasks": results})
        run.write_plot(plot_eval(results, f"{config['name']}, {model.num_timesteps} timesteps: evaluation on fresh seeds"))
        print_eval(results)
    if tracker is not None:
        finish_tracking(tracker, config, run, results, model.num_timesteps, reference)
        tracker.finish()
    venv.close()
    print(f"Run folder: {run.path}")
    return run.path


# -- the steps of main, in order -------------------------------------------------------------


def new_config(args: Args) -> dict[str, Any]:
    options = {key: getattr(args, key) for key in OPTION_KEYS}
    return resolve_config(args.task, algo=args.algo, config_file=args.config, options=options, assignments=args.set, seed=args.seed, device=args.device)


def read_resume(args: Args) -> tuple[RunDir, dict[str, Any], Path]:
    """The run folder of ``--resume``, its config (with a new ``--timesteps``) and its latest checkpoint."""
    run = RunDir(args.resume)
    if not run.config_file.is_file():
        raise ValueError(f"--resume {run.path}: no {RunDir.CONFIG} there; pass a run folder written by agents.train")
    config = run.read_config()
    if args.timesteps is not None:
        config["timesteps"] = args.timesteps
    if args.ray_actors is not None:  # the cluster may differ from the one the run started on
        config["ray_actors"] = args.ray_actors
    checkpoint = run.latest_checkpoint()
    if checkpoint is None:
        raise ValueError(f"--resume {run.path}: it has no checkpoint yet; start a new run instead")
    return run, config, checkpoint


def start_tracking(args: Args, config: dict[str, Any], run: RunDir) -> Any:
    from lrenv.tracking import start_wandb

    # a resumed run keeps its W&B project and run id
    wandb_config = config.setdefault("wandb", {"project": args.wandb_project, "entity": args.wandb_entity})
    tracker = start_wandb(
        {k: v for k, v in config.items() if k != "wandb"},
        project=wandb_config["project"],
        entity=wandb_config["entity"],
        name=run.path.name,
        folder=run.path,
        run_id=wandb_config.get("id"),
        tags=[config["algo"], *config["tasks"]],
        init_timeout=args.wandb_init_timeout,
    )
    wandb_config["id"] = tracker.id
    tracker.hold()  # committed at each checkpoint, so that a resumed run logs nothing twice
    print(f"W&B: tracking {tracker.mode} in {tracker.folder}")
    return tracker


def make_callbacks(config: dict[str, Any], run: RunDir, venv: Any, env: EnvConfig, tracker: Any) -> list[Any]:
    """Episode log and checkpoints; new paired episodes per rollout; validation that keeps the best policy."""
    callbacks = [EpisodeRecorder(run.episodes_file, tracker), CheckpointEvery(run, config["checkpoint_freq"], tracker)]
    paired = unwrap_vec_wrapper(venv, PairedSeeds)
    if paired is not None:
        callbacks.append(NewDrawEachRollout(paired))
    if config.get("eval_freq"):
        validation_env, labels = make_validation_env(config, env)
        callbacks.append(KeepBest(run, validation_env, labels, config["eval_freq"], VALIDATION_SEED, tracker))
    return callbacks


def write_reference(run: RunDir, config: dict[str, Any], env: EnvConfig, progress: bool) -> dict[str, Any] | None:
    """Compute :func:`reference_returns` for a run that logged returns, write it to the run folder and print it."""
    if not logged_returns(run):
        return None  # no training or validation return to set beside them
    start = time.perf_counter()
    try:
        reference = reference_returns(config, env, progress)
    except KeyboardInterrupt:  # the trained policy is saved; the reference is worth no lost run
        print("\nInterrupted the tuned-baseline reference; going on without it")
        return None
    if reference is None:
        return None
    reference["seconds"] = round(time.perf_counter() - start, 1)
    write_json(run.path / REFERENCE_FILE, reference)
    for population in reference["populations"]:
        returns, best = population["returns"], population["best"]
        ranked = ", ".join(f"{'★ ' if m == best else ''}{m} {r:.3f}" for m, r in sorted(returns.items(), key=lambda kv: -kv[1]))
        print(f"Tuned baselines on {population['label']} (mean return on {reference['eval_seeds']} evaluation seeds): {ranked}")
    return reference


def reference_returns(config: dict[str, Any], env: EnvConfig, progress: bool = False) -> dict[str, Any] | None:
    """The mean evaluation return of each tuned baseline on each training population's env.

    A population is an entry of ``populations``, else a task with the env's ``task_config``.
    The baselines are ``reference_baselines`` (all when absent), tuned and evaluated by
    :func:`lrenv.evaluation.compare` with the protocol's defaults and the run's dtype, device
    and divergence penalty: the same populations as ``python -m agents.evaluate``, so a task on
    its default config reuses the harness's cache and the other way round. A return is the
    env's ``log_progress`` one, log(L_0/L_T), ``-divergence_penalty`` for a diverged run.

    Returns:
        ``None`` when there are no reference baselines or the reward is not ``log_progress``
        (a note says so); else the protocol, ``populations`` (each with its ``label`` as in
        ``validation.jsonl``, ``task``, ``task_config``, ``returns``: baseline -> mean return, and
        ``best``: the ★ tuned baseline, the harness's best by tuning score) and ``by_task``:
        the population each task's training curve is set beside (the one on the env's own
        task config, else the task's first).
    """
    baselines = reference_baselines(config)
    if not baselines:
        return None
    if env.reward != "log_progress":
        print(f"No tuned-baseline reference: baselines are scored in log_progress returns, this run's reward is {env.reward}")
        return None
    if config.get("populations"):
        labels = env_labels(config)
        starts = np.cumsum([0] + [p["n_envs"] for p in config["populations"]])
        populations = [{"label": labels[k], "task": p["task"], "task_config": p["task_config"]} for k, p in zip(starts, config["populations"])]
    else:
        populations = [{"label": task, "task": task, "task_config": env.task_overrides} for task in config["tasks"]]
    # "auto" names the device it resolves to, as agents.evaluate's --device does: cache entries are keyed by the name
    device = resolve_device("auto").type if env.device == "auto" else env.device
    by_config: dict[str, list[dict[str, Any]]] = {}
    for population in populations:  # one comparison per task config, of all its tasks at once
        by_config.setdefault(json.dumps(population["task_config"], sort_keys=True), []).append(population)
    for group in by_config.values():
        task_config = group[0]["task_config"] or None
        tasks = list(dict.fromkeys(p["task"] for p in group))
        # a task registered by hand is unknown to spawned workers, and its code is not in the cache's key
        by_hand = any(registered_source(task) == "register_task" for task in tasks)
        runs = len(baselines) * (DEFAULT_TRIALS * DEFAULT_TUNE_SEEDS + DEFAULT_EVAL_SEEDS)
        epochs = runs * sum(make_task(task, **(task_config or {})).config.epochs for task in tasks)
        results = compare(
            tasks,
            baselines=baselines,
            contenders=(),
            optimal=False,
            task_config=task_config,
            device=device,
            dtype=env.dtype,
            divergence_penalty=env.divergence_penalty,
            workers=0 if by_hand or epochs < REFERENCE_WORKER_EPOCHS else min(2, os.cpu_count() or 1),
            cache_dir=None if by_hand else default_cache_dir(),
            progress=progress,
        )
        for population in group:
            task = population["task"]
            population["returns"] = {b: float(np.mean([e.score for e in results.evaluation(task, b)])) for b in baselines}
            population["best"] = results.best_baseline(task)
    # a task's training curve mixes its populations: set it beside the one on the env's own task config, else its first
    by_task: dict[str, int] = {}
    for i, population in sorted(enumerate(populations), key=lambda item: item[1]["task_config"] != env.task_overrides):
        by_task.setdefault(population["task"], i)
    return {
        "baselines": baselines,
        "trials": DEFAULT_TRIALS,
        "tune_seeds": DEFAULT_TUNE_SEEDS,
        "eval_seeds": DEFAULT_EVAL_SEEDS,
        "device": device,
        "dtype": env.dtype,
        "divergence_penalty": env.divergence_penalty,
        "populations": populations,
        "by_task": by_task,
    }


def keep_best(run: RunDir, config: dict[str, Any]) -> None:
    """Make the best validated policy the run's policy (when validation ran), and plot learning."""
    best = run.adopt_best()
    if best is not None:
        print(f"Kept the policy of timestep {best['timesteps']}, best on validation (mean return {best['mean_return']:.4f})")
    if logged_returns(run):
        run.write_figure(RunDir.LEARNING_PLOT, plot_learning(run, config["name"]))


def logged_returns(run: RunDir) -> bool:
    """Whether the run logged training or validation returns (what learning.png and the reference stand beside)."""
    return (run.path / RunDir.VALIDATION).is_file() or run.episodes_file.is_file()


def make_logger(run: RunDir, verbose: int, tracker: Any) -> Logger:
    formats = [CSVOutputFormat(str(run.new_progress_csv()))]
    if verbose:
        formats.append(HumanOutputFormat(sys.stdout))
    if tracker is not None:
        formats.append(tracker.sb3_output())
    return Logger(folder=str(run.path), output_formats=formats)


def evaluate(policy: LoadedPolicy, config: dict[str, Any], env: EnvConfig, episodes: int) -> dict[str, Any]:
    """The policy and the task's default constant LR on the same fresh seeds, per task (the harness's runner)."""
    seeds = [EVAL_SEED + i for i in range(episodes)]
    env = env.replace(base_lr_spread=1.0)  # evaluated from each task's default_lr
    baseline_env = env.replace(action_mode="absolute")  # the baselines act in absolute mode
    learned = PolicyRef("object", name="policy", obj=policy)
    results: dict[str, Any] = {}
    for task in config["tasks"]:
        default_lr = float(config["task_configs"][task]["default_lr"])
        constant = PolicyRef("baseline", name="constant", params=(("lr", default_lr),))
        policy_slots = [Slot("policy", (), s, "eval", learned) for s in seeds]
        constant_slots = [Slot("constant", constant.params, s, "eval", constant) for s in seeds]
        if baseline_env == env:
            done = run_job(Job(task, env, policy_slots + constant_slots))
        else:
            done = run_job(Job(task, env, policy_slots)) + run_job(Job(task, baseline_env, constant_slots))
        policy_episodes = [episode_record(e) for e in done if e.method == "policy"]
        constant_episodes = [episode_record(e) for e in done if e.method == "constant"]
        results[task] = {
            "policy": summarise(policy_episodes),
            "default_constant": summarise(constant_episodes),
            "default_lr": default_lr,
            "seeds": seeds,
            "policy_episodes": policy_episodes,
            "default_constant_episodes": constant_episodes,
        }
    return results


def episode_record(episode: Episode) -> dict[str, Any]:
    """An evaluation episode as eval.json keeps it: its score, end, and per-epoch curves of epochs 1..T."""
    return {
        "seed": episode.seed,
        "return": episode.score,
        "diverged": episode.diverged,
        "final_valid_loss": episode.valid_loss[-1],
        "final_valid_accuracy": episode.valid_accuracy[-1] if episode.valid_accuracy else None,
        "lr": episode.lrs,
        "train_loss": episode.train_loss[1:],  # index 0 is the untrained model
        "valid_loss": episode.valid_loss[1:],
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


def plot_eval(results: dict[str, Any], title: str) -> Any:
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
                    mean = res[kind.replace("_episodes", "")]["final_valid_loss_mean"]
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
    return fig


def plot_learning(run: RunDir, title: str) -> Any:
    """Training return per task (episodes.jsonl, a running mean) and validation return per population (validation.jsonl) against timesteps.

    Beside each curve, in its colour, the return of its ★ tuned baseline (dashed) and of tuned
    cosine (dotted) on the same env, where the run folder has them (``reference_returns.json``).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    ax_train, ax_valid = fig.subplots(1, 2)
    reference_file = run.path / REFERENCE_FILE
    reference = json.loads(reference_file.read_text()) if reference_file.is_file() else {"populations": [], "by_task": {}}
    by_label: dict[str, dict[str, Any]] = {}
    for population in reference["populations"]:
        by_label.setdefault(population["label"], population)
    if run.episodes_file.is_file():
        by_task: dict[str, list[tuple[int, float]]] = {}
        for line in run.episodes_file.read_text().splitlines():
            record = json.loads(line)
            if record.get("return") is not None:
                by_task.setdefault(record["task"], []).append((record["timesteps"], record["return"]))
        for task, points in by_task.items():
            t, r = np.array(points).T
            window = max(1, len(r) // 20)
            (line,) = ax_train.plot(t[window - 1 :], np.convolve(r, np.ones(window) / window, mode="valid"), label=task)
            if task in reference["by_task"]:
                plot_reference(ax_train, task, reference["populations"][reference["by_task"][task]], line.get_color())
        ax_train.legend(fontsize=7)
    ax_train.set(xlabel="timesteps (inner epochs)", ylabel="episode return", title="training episodes (running mean)")
    validation = run.path / RunDir.VALIDATION
    records = [json.loads(line) for line in validation.read_text().splitlines()] if validation.is_file() else []
    if records:
        t = [r["timesteps"] for r in records]
        for label in records[0]["returns"]:
            (line,) = ax_valid.plot(t, [r["returns"].get(label, np.nan) for r in records], marker=".", label=label)
            if label in by_label:
                plot_reference(ax_valid, label, by_label[label], line.get_color())
        ax_valid.plot(t, [r["mean_return"] for r in records], color="k", linewidth=2, label="mean")
        ax_valid.legend(fontsize=6)
    else:
        ax_valid.text(0.5, 0.5, "no validation episodes (eval_freq is 0)", ha="center", va="center", transform=ax_valid.transAxes)
    ax_valid.set(xlabel="timesteps (inner epochs)", ylabel="return", title="validation episodes (fixed seeds, deterministic)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_reference(ax: Any, name: str, population: dict[str, Any], color: str) -> None:
    """Horizontal lines at a population's ★ tuned baseline's return (dashed) and tuned cosine's (dotted)."""
    returns, best = population["returns"], population["best"]
    for method in dict.fromkeys(m for m in (best, REFERENCE_COSINE) if m in returns):
        star = " ★" if method == best else ""
        ax.axhline(returns[method], color=color, linestyle="--" if star else ":", linewidth=1, label=f"{name}: tuned {method}{star} {returns[method]:.2f}")


def print_eval(results: dict[str, Any]) -> None:
    def fmt(s: dict[str, Any]) -> str:
        mean = s["final_valid_loss_mean"]
        return ("-" if mean is None else f"{mean:.4f} ± {s['final_valid_loss_std']:.4f}") + (f", {s['diverged']} diverged" if s["diverged"] else "")

    for task, res in results.items():
        p, c = res["policy"], res["default_constant"]
        seeds = f"{p['episodes']} fresh seed{'s' if p['episodes'] != 1 else ''}"
        print(f"Eval {task} ({seeds}), final valid loss: policy {fmt(p)}; default constant LR {res['default_lr']:g} {fmt(c)}")


def finish_tracking(
    tracker: Any, config: dict[str, Any], run: RunDir, results: dict[str, Any], timesteps: int, reference: dict[str, Any] | None = None
) -> None:
    """Evaluation results, episode curves, the tuned baselines' reference returns and the policy artifact to W&B."""
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
    if reference is not None:  # fixed numbers, not a curve over timesteps: the summary only
        summary: dict[str, Any] = {}
        for population in reference["populations"]:
            summary.update({f"reference/{population['label']}/{method}": value for method, value in population["returns"].items()})
            summary[f"reference/{population['label']}/best"] = population["best"]
        tracker.summary(summary)
    if rows:
        tracker.table("eval/curves", ["task", "schedule", "seed", "epoch", "lr", "train_loss", "valid_loss"], rows, timesteps)
    if run.plot_file.is_file():
        tracker.image("eval/schedule", run.plot_file, timesteps)
    if run.episodes_file.is_file():
        lines = run.episodes_file.read_text().splitlines()[-20000:]  # W&B tables stay small; the file has them all
        columns = ["timesteps", "task", "run_seed", "return", "final_valid_loss", "final_valid_accuracy", "diverged", "lr", "valid_loss"]
        episode_rows = [[e[c] if c not in ("lr", "valid_loss") else json.dumps(e[c]) for c in columns] for e in map(json.loads, lines)]
        if episode_rows:
            tracker.table("episode/curves", columns, episode_rows, timesteps)
    metadata = {"algo": config["algo"], "tasks": config["tasks"], "timesteps": timesteps}
    tracker.log_artifact(f"policy-{config['name']}", "model", run.artifact_files(), metadata=metadata)


if __name__ == "__main__":
    main()
