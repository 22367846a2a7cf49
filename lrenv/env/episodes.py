"""N episodes of one task driven in lockstep: the bookkeeping LREnv and BatchedVecEnv share.

An :class:`EpisodeBatch` joins an :class:`~lrenv.engine.Engine` (training), an
:class:`~lrenv.env.features.Observer` (observations), an :class:`~lrenv.env.actions.ActionMapping`
(actions → learning rates) and a reward function, as an :class:`~lrenv.env.config.EnvConfig`
sets them, for N runs of one task. It knows when an episode ends; what happens then (wait
for ``reset()``, or autoreset) is its owner's choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lrenv.engine import Engine, EpochStats
from lrenv.env.config import EnvConfig
from lrenv.env.features import Observer
from lrenv.env.rewards import RewardInput, get_reward, resolve_target


class EpisodeBatch:
    """Episodes of the N runs of one engine.

    Args:
        engine: Trains the runs (its task gives budget, LR range and target loss).
        config: Features, action mapping, reward, divergence penalty and target loss.
    """

    def __init__(self, engine: Engine, config: EnvConfig) -> None:
        n = engine.n_runs
        cfg = engine.task.config
        self.engine = engine
        self.n = n
        self.observer = Observer(config.features, n=n)
        self.actions = config.action_mapping()
        self._reward = get_reward(config.reward)
        self.divergence_penalty = config.divergence_penalty
        target = resolve_target(config.reward, config.target_loss, cfg.target_loss, engine.task.name)
        self.target = np.full(n, np.nan if target is None else float(target))
        self.epochs = np.full(n, cfg.epochs, dtype=np.int64)
        self.lr_range = np.tile(np.array(cfg.lr_range, dtype=np.float64), (n, 1))
        self.epoch = np.zeros(n, dtype=np.int64)
        self.lr = np.full(n, cfg.default_lr, dtype=np.float64)
        self.base_lr = self.lr.copy()
        self.base_lr_spread = config.base_lr_spread
        self.first_valid = np.full(n, np.nan)
        self.valid = np.full(n, np.nan)
        self.returns = np.zeros(n)
        self.run_seeds = np.zeros(n, dtype=np.int64)
        self.done = np.ones(n, dtype=bool)

    def start(self, runs: Sequence[int], seeds: Sequence[int]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Start new episodes on ``runs`` from run seeds; returns their observations and infos."""
        idx = np.asarray(runs, dtype=np.int64)
        initial = self.engine.reset(list(seeds), runs=list(idx))
        self.run_seeds[idx] = seeds
        self.epoch[idx] = 0
        self.base_lr[idx] = [self.engine.task.config.default_lr * self._base_lr_factor(seed) for seed in seeds]
        self.lr[idx] = self.base_lr[idx]
        self.first_valid[idx] = self.valid[idx] = initial.valid_loss
        self.returns[idx] = 0.0
        self.done[idx] = False
        obs = self.observer.reset(idx, initial, self.lr[idx], self.epochs[idx], self.lr_range[idx])
        return obs, self.infos(initial, idx)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """One epoch for every run; returns ``(obs, reward, terminated, truncated, infos)``.

        Every run must be inside an episode (the owner restarts finished ones first).
        """
        if self.done.any():
            raise RuntimeError(
                f"runs {np.flatnonzero(self.done).tolist()} have finished their episodes: reset them before stepping"
            )
        lr = self.actions.to_lr(actions, self.lr, self.lr_range, self.base_lr, self.epoch / self.epochs)
        stats = self.engine.run_epoch(lr)
        self.epoch += 1
        self.lr = lr
        reward, reached = self._reward(
            RewardInput(
                epoch=self.epoch,
                epochs=self.epochs,
                first_valid=self.first_valid,
                prev_valid=self.valid,
                valid=stats.valid_loss,
                diverged=stats.diverged,
                target=self.target,
                returns=self.returns,
            ),
            self.divergence_penalty,
        )
        obs = self.observer.update(stats, lr)
        self.valid = np.array(stats.valid_loss, dtype=np.float64)
        self.returns = self.returns + reward
        # the budget ends the MDP: progress i/T is observed, so the state at T is terminal, and
        # an agent that bootstrapped a value there (a time-limit truncation) would learn to
        # prefer high final losses (SB3's PPO did: agents/PSI.md, "PPO's Digits collapse")
        terminated = stats.diverged | reached | (self.epoch >= self.epochs)
        truncated = np.zeros(self.n, dtype=bool)
        self.done = terminated
        return obs, reward, terminated, truncated, self.infos(stats, np.arange(self.n))

    def _base_lr_factor(self, seed: int) -> float:
        """default_lr's factor for an episode: spread ** u, u ~ U(-1, 1) from the run seed (LREnv and BatchedVecEnv agree)."""
        if self.base_lr_spread == 1.0:
            return 1.0
        u = np.random.default_rng([int(seed), 0x6C72]).uniform(-1.0, 1.0)
        return float(self.base_lr_spread**u)

    def infos(self, stats: EpochStats, runs: np.ndarray) -> list[dict[str, Any]]:
        """Raw numbers of each run (``stats`` rows are in the order of ``runs``)."""
        name = self.engine.task.name
        infos = []
        for row, k in enumerate(runs):
            info: dict[str, Any] = {
                "task": name,
                "run_seed": int(self.run_seeds[k]),
                "epoch": int(self.epoch[k]),
                "lr": float(self.lr[k]),
                "train_loss": float(stats.train_loss[row]),
                "train_loss_std": float(stats.train_loss_std[row]),
                "valid_loss": float(stats.valid_loss[row]),
            }
            for metric, values in stats.metrics.items():
                info[f"valid_{metric}"] = float(values[row])
            info["diverged"] = bool(stats.diverged[row])
            infos.append(info)
        return infos
