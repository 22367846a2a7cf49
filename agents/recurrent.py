"""Experiment: sb3-contrib's RecurrentPPO (an LSTM policy) on agents.train's env, evaluated beside the action-0 policy.

Usage::

    python -m agents.recurrent --timesteps 10240 --seed 0 --out runs/recurrent
    python -m agents.recurrent --task Digits-MLP-v0 --set env.task_config.epochs=10 hyperparams.use_sde=true

An experiment, not an algorithm of ``agents.train``: its policies cannot be saved as lrenv
policy files. That format (:mod:`lrenv.policy`) holds feed-forward policies only: its
allow-list names no recurrent policy class, and what reads it (``LoadedPolicy.predict``,
:mod:`lrenv.scheduler`) asks for one action per observation and carries no hidden state from
one epoch to the next. So the model is evaluated here, right after training, by the harness's
runner (:func:`lrenv.evaluation.runner.run_job`), which passes SB3-style ``state`` and
``episode_start`` along.

The env is ``agents.train``'s: the ppo config (``agents/configs/ppo.yaml``) with PSI.md section
7's settings (:data:`DEFAULT_SET`), then ``--set``, built by :func:`lrenv.agents.vec_env.make_vec_env`.
RecurrentPPO takes PPO's hyperparameters from it and an ``MlpLstmPolicy`` (LSTM, then the
config's ``net_arch``). Evaluation is deterministic on ``agents.train``'s seeds
(``EVAL_SEED + i``), observations normalised with the training statistics, beside the action-0
policy (in multiplier mode with a cosine base: cosine decay from the default LR) and the
default constant LR on the same seeds. Writes to ``--out``: ``config.json``, ``episodes.jsonl``
(the training episodes, as ``agents.train`` writes them), ``model.zip`` and ``vecnormalize.pkl``
(SB3's formats) and ``results.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.vec_env import VecNormalize

from lrenv.agents.callbacks import EpisodeRecorder
from lrenv.agents.config import allowed_hyperparams, build_hyperparams, env_config, resolve_config
from lrenv.agents.train import evaluate
from lrenv.agents.vec_env import make_vec_env
from lrenv.run_dir import write_json

#: PSI.md section 7's setting: relative features, a ×30 multiplier on a cosine base.
DEFAULT_SET = ["env.features=relative", "env.action_mode=multiplier", "env.relative_factor=30", "env.base_shape=cosine"]


class RecurrentPolicy:
    """The trained model as the runner asks for it: raw observations in, normalised as in training, LSTM state carried."""

    def __init__(self, model: RecurrentPPO, venv: Any) -> None:
        self.model = model
        self.normalization = venv if isinstance(venv, VecNormalize) else None

    def predict(self, obs: np.ndarray, state: Any = None, episode_start: Any = None, deterministic: bool = True) -> tuple[np.ndarray, Any]:
        if self.normalization is not None:
            obs = self.normalization.normalize_obs(obs)
        return self.model.predict(np.asarray(obs, dtype=np.float32), state=state, episode_start=episode_start, deterministic=deterministic)


class ActionZero:
    """Action 0 at every epoch: the base schedule itself."""

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
        return np.zeros((len(obs), 1), dtype=np.float32), None


def paired(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """Final valid loss of ``a`` minus ``b``, seed by seed, over the seeds where neither diverged; ``wins``: ``a`` lower."""
    b_loss = {e["seed"]: e["final_valid_loss"] for e in b if not e["diverged"]}
    diff = np.array([e["final_valid_loss"] - b_loss[e["seed"]] for e in a if not e["diverged"] and e["seed"] in b_loss])
    return {
        "mean": float(diff.mean()) if len(diff) else None,
        "std": float(diff.std()) if len(diff) else None,
        "wins": int((diff < 0).sum()),
        "seeds": len(diff),
    }


def fmt(summary: dict[str, Any]) -> str:
    mean, std, diverged = summary["final_valid_loss_mean"], summary["final_valid_loss_std"], summary["diverged"]
    return ("-" if mean is None else f"{mean:.4f} ± {std:.4f}") + (f" ({diverged} diverged)" if diverged else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agents.recurrent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="MNIST1D-MLP-v0", help="the task (default: MNIST1D-MLP-v0)")
    parser.add_argument("--timesteps", type=int, help="total agent steps (inner epochs over all envs); default: the config's")
    parser.add_argument("--seed", type=int, default=0, help="seed of the agent and the envs")
    parser.add_argument("--n-envs", type=int, help="parallel envs; default: the config's")
    parser.add_argument("--eval-episodes", type=int, help="evaluation seeds; default: the config's")
    parser.add_argument("--lstm-hidden-size", type=int, default=64, help="LSTM units (actor and critic each have one)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides after DEFAULT_SET, as agents.train's --set")
    parser.add_argument("--out", default="runs/recurrent", help="output folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    torch.set_num_threads(1)
    args = parse_args(argv)
    options = {"timesteps": args.timesteps, "n_envs": args.n_envs, "eval_episodes": args.eval_episodes}
    config = resolve_config([args.task], algo="ppo", options=options, assignments=DEFAULT_SET + args.set, seed=args.seed)
    env = env_config(config)
    hyperparams = build_hyperparams(config)
    unknown = sorted(set(hyperparams) - set(allowed_hyperparams(RecurrentPPO)))
    if unknown:
        raise SystemExit(f"RecurrentPPO does not take {', '.join(unknown)}")
    hyperparams["policy_kwargs"] = {**hyperparams.get("policy_kwargs", {}), "lstm_hidden_size": args.lstm_hidden_size}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "episodes.jsonl").unlink(missing_ok=True)  # EpisodeRecorder appends
    write_json(out / "config.json", {**config, "lstm_hidden_size": args.lstm_hidden_size})

    start = time.perf_counter()
    venv, _ = make_vec_env(config, env, config["seed"])
    model = RecurrentPPO("MlpLstmPolicy", venv, seed=config["seed"], device="cpu", **hyperparams)
    model.learn(total_timesteps=config["timesteps"], callback=EpisodeRecorder(out / "episodes.jsonl"))
    train_seconds = time.perf_counter() - start
    model.save(out / "model.zip")
    if isinstance(venv, VecNormalize):
        venv.training = False
        venv.save(str(out / "vecnormalize.pkl"))

    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    returns = np.array([e["return"] for e in episodes], dtype=float)
    results: dict[str, Any] = {
        "timesteps": model.num_timesteps,
        "train_seconds": train_seconds,
        "train_return_bins": [float(returns[b].mean()) for b in np.array_split(np.arange(len(returns)), 5) if len(b)],
        "train_diverged": int(sum(e["diverged"] for e in episodes)),
        "tasks": {},
    }
    learned = evaluate(RecurrentPolicy(model, venv), config, env, config["eval_episodes"])
    action0 = evaluate(ActionZero(), config, env, config["eval_episodes"])
    for task, res in learned.items():
        zero = action0[task]["policy_episodes"]
        results["tasks"][task] = {
            "policy": res["policy"],
            "action0": action0[task]["policy"],
            "default_constant": res["default_constant"],
            "default_lr": res["default_lr"],
            "policy_minus_action0": paired(res["policy_episodes"], zero),
            "seeds": res["seeds"],
            "policy_final_valid_loss": [e["final_valid_loss"] for e in res["policy_episodes"]],
            "action0_final_valid_loss": [e["final_valid_loss"] for e in zero],
            "policy_lr": [e["lr"] for e in res["policy_episodes"]],
        }
    results["wall_seconds"] = time.perf_counter() - start
    write_json(out / "results.json", results)
    bins = " ".join(f"{r:.3f}" for r in results["train_return_bins"])
    print(f"RecurrentPPO, {model.num_timesteps} timesteps in {train_seconds:.0f} s; training return in 5 bins: {bins}")
    for task, r in results["tasks"].items():
        p, z, c, d = r["policy"], r["action0"], r["default_constant"], r["policy_minus_action0"]
        print(
            f"Eval {task} ({p['episodes']} seeds), final valid loss: policy {fmt(p)}; action 0 {fmt(z)}; default constant {fmt(c)}; "
            + ("policy - action 0: no seed to pair" if d["mean"] is None else f"policy - action 0 {d['mean']:+.4f} (better on {d['wins']}/{d['seeds']})")
        )
    print(f"Wrote {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
