"""The episode runner: one population of a comparison, driven epoch by epoch by its slots' policies.

:func:`run_job` builds the job's engine population and drives it through
:class:`lrenv.env.episodes.EpisodeBatch`, the bookkeeping ``LREnv`` itself uses, so an
episode here is exactly the episode ``LREnv(task).reset(seed=s)`` gives. Each slot's policy
acts on its own runs; a diverged run is recorded and idles until the population ends. The
result is one :class:`Episode` record per slot.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lrenv.baselines import make_policy
from lrenv.engine import Engine
from lrenv.env.episodes import EpisodeBatch
from lrenv.evaluation.protocol import Job, PolicyRef, env_run_seed
from lrenv.schedules import FixedSchedule, SchedulePolicy
from lrenv.task import TaskConfig


@dataclass
class Episode:
    """What one episode did: the LR and loss of each epoch, and its end.

    ``lrs[i]`` is the LR of epoch i+1; ``valid_loss[0]`` is the untrained loss. A diverged
    episode's curves stop at the epoch it diverged.
    """

    task: str
    method: str
    params: dict[str, float]
    role: str
    seed: int
    run_seed: int
    epochs: int
    lrs: list[float]
    valid_loss: list[float]
    train_loss: list[float]
    valid_accuracy: list[float]
    diverged: bool
    test_loss: float
    test_accuracy: float
    divergence_penalty: float
    target: float | None

    @property
    def initial_loss(self) -> float:
        return self.valid_loss[0]

    @property
    def final_loss(self) -> float:
        """Final validation loss; ``L_0 · e^penalty`` for a diverged run."""
        if self.diverged:
            return self.initial_loss * math.exp(self.divergence_penalty)
        return self.valid_loss[-1]

    @property
    def score(self) -> float:
        """The episode's return under ``log_progress``: ``log(L_0 / L_T)``, ``-penalty`` if diverged."""
        return -self.divergence_penalty if self.diverged else math.log(self.initial_loss / self.valid_loss[-1])

    @property
    def final_accuracy(self) -> float:
        if not self.valid_accuracy:
            return math.nan
        value = self.valid_accuracy[-1]
        return 0.0 if not math.isfinite(value) else value

    @property
    def epochs_to_target(self) -> float:
        """First epoch whose validation loss is at most the target (``inf`` if none, ``nan`` without a target)."""
        if self.target is None:
            return math.nan
        for epoch, loss in enumerate(self.valid_loss[1:], start=1):
            if loss <= self.target:
                return float(epoch)
        return math.inf

    @property
    def accepted(self) -> float:
        """1 if the run reaches the acceptance level (test loss ≤ target), 0 if not, nan without a target."""
        if self.target is None:
            return math.nan
        return float(not self.diverged and self.test_loss <= self.target)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)



# -- running one population ------------------------------------------------------------

_RUN_POLICIES: dict[str, Any] = {}  # run dir -> loaded policy, per process


def remember_policy(run_dir: str, policy: Any) -> None:
    """Use ``policy`` for ``run_dir`` in this process instead of loading it again."""
    _RUN_POLICIES.setdefault(run_dir, policy)


def _build_policy(ref: PolicyRef, config: TaskConfig, features: str) -> Any:
    if ref.kind == "baseline":
        return make_policy(ref.name, config, features=features, **dict(ref.params))
    if ref.kind == "fixed":
        if len(ref.lrs) != config.epochs:
            raise ValueError(f"a fixed schedule of {len(ref.lrs)} LRs cannot drive a task of {config.epochs} epochs")
        return FixedSchedule(ref.lrs, config.lr_range, features=features)
    if ref.kind == "run":
        if ref.run_dir not in _RUN_POLICIES:
            from lrenv.policy import load_policy

            _RUN_POLICIES[ref.run_dir] = load_policy(ref.run_dir)
        return _RUN_POLICIES[ref.run_dir]
    if ref.kind == "object":
        return ref.obj
    raise ValueError(f"unknown policy kind {ref.kind!r}")


def _predict(policy: Any, obs: np.ndarray, state: Any, start: np.ndarray) -> tuple[np.ndarray, Any]:
    """Actions of a baseline (stateful, SB3 style) or of a learned policy (``predict(obs, deterministic=True)``)."""
    if isinstance(policy, SchedulePolicy):
        return policy.predict(obs, state=state, episode_start=start)
    parameters = inspect.signature(policy.predict).parameters
    if "state" in parameters and "episode_start" in parameters:
        out = policy.predict(obs, state=state, episode_start=start, deterministic=True)
    else:
        out = policy.predict(obs, deterministic=True)
    if isinstance(out, tuple):
        return np.asarray(out[0]), (out[1] if len(out) > 1 else None)
    return np.asarray(out), None


def run_job(job: Job, on_epochs: Callable[[int], None] | None = None) -> list[Episode]:
    """Run one population epoch by epoch; each slot's policy drives its own run.

    Args:
        job: The population.
        on_epochs: Called with the number of runs after each epoch (progress).

    Returns:
        One :class:`Episode` per slot, in slot order.
    """
    task = job.make_task()
    config = task.config
    n = len(job.slots)
    env = job.env.replace(reward="log_progress", target_loss=None)
    with warnings.catch_warnings():  # the loop fallback of unbatchable models is expected here
        warnings.simplefilter("ignore")
        engine = Engine(task, n_runs=n, device=env.device, dtype=env.torch_dtype, batched=job.batched)
    episodes = EpisodeBatch(engine, env)
    groups: dict[tuple, tuple[Any, list[int]]] = {}
    for k, slot in enumerate(job.slots):
        key = slot.policy.key()
        if key not in groups:
            groups[key] = (_build_policy(slot.policy, config, job.env.features), [])
        groups[key][1].append(k)
    index = {key: np.asarray(idx) for key, (_, idx) in groups.items()}
    states: dict[tuple, Any] = {key: None for key in groups}

    run_seeds = [env_run_seed(slot.seed) for slot in job.slots]
    obs, infos = episodes.start(range(n), run_seeds)
    records = [
        {"lrs": [], "valid": [info["valid_loss"]], "train": [info["train_loss"]], "acc": _acc(info), "diverged": False}
        for info in infos
    ]
    alive = np.ones(n, dtype=bool)
    starts = np.ones(n, dtype=bool)
    for epoch in range(config.epochs):
        actions = np.full((n, 1), -1.0)  # finished (diverged) slots idle at the bottom of the range
        for key, (policy, _) in groups.items():
            idx = index[key]
            a, states[key] = _predict(policy, obs[idx], states[key], starts[idx])
            actions[idx] = np.asarray(a, dtype=np.float64).reshape(len(idx), -1)
        actions[~alive] = -1.0
        obs, _, terminated, _, infos = episodes.step(actions)
        starts[:] = False
        for k in np.flatnonzero(alive):
            info, rec = infos[k], records[k]
            rec["lrs"].append(info["lr"])
            rec["valid"].append(info["valid_loss"])
            rec["train"].append(info["train_loss"])
            rec["acc"].extend(_acc(info))
        ended = alive & terminated  # the budget, a divergence, or a reached target
        if ended.any():
            for k in np.flatnonzero(ended):
                records[k]["diverged"] = bool(infos[k]["diverged"])
            alive &= ~ended
            if epoch < config.epochs - 1:  # ended early: the slot idles as a dummy until the population ends
                dummies = np.flatnonzero(ended)
                new_obs, _ = episodes.start(dummies, [run_seeds[k] for k in dummies])
                obs[dummies] = new_obs
        if on_epochs is not None:
            on_epochs(n)
    if engine.test is not None:
        test_loss, test_metrics = engine.evaluate("test")
        test_acc = test_metrics.get("accuracy", np.full(n, np.nan))
    else:  # no test split (the noisy quadratic: its validation loss is the exact risk)
        test_loss = np.array([rec["valid"][-1] for rec in records])
        test_acc = np.array([rec["acc"][-1] if rec["acc"] else np.nan for rec in records])
    name = task.name or type(task).__name__
    return [
        Episode(
            task=name,
            method=slot.method,
            params=dict(slot.params),
            role=slot.role,
            seed=slot.seed,
            run_seed=run_seeds[k],
            epochs=config.epochs,
            lrs=rec["lrs"],
            valid_loss=rec["valid"],
            train_loss=rec["train"],
            valid_accuracy=rec["acc"],
            diverged=rec["diverged"],
            test_loss=math.nan if rec["diverged"] else float(test_loss[k]),
            test_accuracy=math.nan if rec["diverged"] else float(test_acc[k]),
            divergence_penalty=env.divergence_penalty,
            target=config.target_loss,
        )
        for k, (slot, rec) in enumerate(zip(job.slots, records))
    ]


def _acc(info: dict[str, Any]) -> list[float]:
    return [float(info["valid_accuracy"])] if "valid_accuracy" in info else []
