"""LREnv: choose the learning rate of each epoch of an inner PyTorch training run."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from lrenv.actions import ActionMapping
from lrenv.engine import Engine, EpochStats
from lrenv.features import Observer
from lrenv.registry import make_task
from lrenv.rewards import RewardInput, get_reward
from lrenv.task import Task

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class LREnv(gym.Env):
    """One step trains one epoch of an inner run at the learning rate the action chooses.

    ## Description
    Each episode is one training run of an inner task (data + model + loss, see
    :class:`lrenv.Task`) from a fresh initialisation, for the task's epoch budget T. Before
    each epoch the agent picks the learning rate; the observation describes the loss so far.
    A learned policy is a learning-rate schedule Ψ(loss history, epoch).

    ## Action space
    ``Box(-1, 1, (1,), float32)``. ``action_mode="absolute"``: the action maps
    log-uniformly onto the task's ``lr_range`` (-1 → low, 1 → high). ``"relative"``: the LR
    is multiplied by ``relative_factor ** a``, starting from the task's ``default_lr`` and
    clipped to the range. Out-of-range actions are clipped; non-finite ones raise ValueError.

    ## Observation space
    A float32 vector with finite bounds, scale-free so one policy transfers across tasks;
    see :mod:`lrenv.features` for the tables. ``features="standard"`` (8 values: progress
    i/T, log LR in range, log train and validation loss relative to epoch 0, their last
    changes, within-epoch batch-loss spread, generalisation gap) or ``"minimal"``
    (progress and log relative validation loss: Ψ(ε, i) exactly as posed).

    ## Rewards
    ``reward="log_progress"`` (default): ``log(L_{t-1}/L_t)`` on validation loss, so an
    episode's return is ``log(L_0/L_T)``. ``"final_loss"``: the same return, paid at the end.
    ``"time_to_target"``: -1 per epoch until the validation loss reaches ``target_loss``.
    See :mod:`lrenv.rewards`, including the divergence penalty.

    ## Episode end
    ``terminated``: the run diverged (a loss is non-finite or exceeds ``divergence_factor``
    times its initial value; return exactly ``-divergence_penalty`` for the loss rewards), or
    the target was reached under ``"time_to_target"``. ``truncated``: the epoch budget T of
    the task is used up. Observations stay finite in every case.

    ## Starting state
    ``reset(seed=...)`` draws the task (when several are given) and a run seed from the env's
    RNG; the run seed fixes the model's initialisation and the data order, so the same seed
    and actions give the same episode. ``options={"task": name}`` picks the task explicitly.

    ## Info
    ``task``, ``run_seed``, ``epoch``, ``lr`` (the LR of the epoch just trained; at reset the
    starting LR), ``train_loss``, ``train_loss_std``, ``valid_loss``, ``valid_<metric>`` (e.g.
    ``valid_accuracy`` for classifiers) and ``diverged``: raw numbers, possibly non-finite
    after divergence.

    ## Arguments
    Args:
        task: A registered task name, a :class:`lrenv.Task`, or a list of them to sample
            from (uniformly) per episode.
        seed: Seed of the first ``reset()`` when that call passes none.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        dtype: ``"float32"`` or ``"float64"`` for the inner model and data.
        reward: ``"log_progress"``, ``"final_loss"`` or ``"time_to_target"``.
        action_mode: ``"absolute"`` or ``"relative"``.
        relative_factor: f of relative mode (per-epoch factor range [1/f, f]).
        features: ``"standard"`` or ``"minimal"``.
        divergence_penalty: p > 0, see Episode end.
        target_loss: Target validation loss of ``"time_to_target"``; defaults to each task's
            ``target_loss``.
        task_config: :class:`lrenv.TaskConfig` overrides applied to every task (e.g.
            ``{"epochs": 10}``).
        render_mode: ``None``, ``"ansi"`` (a text line per epoch) or ``"rgb_array"`` (LR and
            loss curves of the episode so far).

    ## Version history
    * v0: initial version.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(
        self,
        task: str | Task | Sequence[str | Task] = "MNIST1D-MLP-v0",
        *,
        seed: int | None = None,
        device: str | torch.device | None = "auto",
        dtype: str = "float32",
        reward: str = "log_progress",
        action_mode: str = "absolute",
        relative_factor: float = 2.0,
        features: str = "standard",
        divergence_penalty: float = 2.0,
        target_loss: float | None = None,
        task_config: dict[str, Any] | None = None,
        render_mode: str | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            allowed = [p for p in inspect.signature(LREnv.__init__).parameters if p not in ("self", "unknown")]
            raise TypeError(f"LREnv got unknown keyword argument(s) {', '.join(sorted(unknown))}; allowed: {', '.join(allowed)}")
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unknown render_mode {render_mode!r}; choose None or one of {', '.join(self.metadata['render_modes'])}")
        if not (math.isfinite(divergence_penalty) and divergence_penalty > 0):
            raise ValueError(f"divergence_penalty must be a finite number > 0, got {divergence_penalty!r}")
        specs = [task] if isinstance(task, (str, Task)) else list(task)
        if not specs:
            raise ValueError("task must name at least one task")
        self.tasks: list[Task] = [make_task(t, **(task_config or {})) for t in specs]
        self.reward_name = reward
        self._reward_fn = get_reward(reward)
        if reward == "time_to_target":
            missing = [t.name for t in self.tasks if (target_loss if target_loss is not None else t.config.target_loss) is None]
            if missing:
                raise ValueError(f"reward 'time_to_target' needs a target loss; tasks {missing} define none: pass target_loss=")
        self.target_loss = target_loss
        self.divergence_penalty = float(divergence_penalty)
        self.device = device
        self.dtype = DTYPES[dtype]
        self.actions = ActionMapping(action_mode, relative_factor)
        self.observer = Observer(features, n=1)
        self.action_space = self.actions.space
        self.observation_space = self.observer.space
        self.render_mode = render_mode
        self._default_seed = seed
        self._engines: dict[int, Engine] = {}
        self._engine: Engine | None = None
        self._task_index = 0
        self._done = True
        self._history: list[dict[str, Any]] = []

    # -- Gymnasium API ---------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is None and self._default_seed is not None:
            seed, self._default_seed = self._default_seed, None
        super().reset(seed=seed)
        self._task_index = self._choose_task(options or {})
        task = self.tasks[self._task_index]
        self._engine = self._engine_for(self._task_index)
        self._run_seed = int(self.np_random.integers(2**31 - 1))
        initial = self._engine.reset([self._run_seed])
        cfg = task.config
        self._lr = float(cfg.default_lr)
        self._lr_range = np.array([cfg.lr_range], dtype=np.float64)
        self._target = self.target_loss if self.target_loss is not None else cfg.target_loss
        self._first_valid = float(initial.valid_loss[0])
        self._valid = self._first_valid
        self._return = 0.0
        self._epoch = 0
        obs = self.observer.reset([0], initial, np.array([self._lr]), np.array([cfg.epochs]), self._lr_range)[0]
        self._done = False
        info = self._info(initial)
        self._history = [info]
        return obs, info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._done or self._engine is None:
            raise RuntimeError("the episode has ended (or never started): call reset() before step()")
        lr = self.actions.to_lr(np.asarray(action), np.array([self._lr]), self._lr_range)
        stats = self._engine.run_epoch(lr)
        self._epoch += 1
        self._lr = float(lr[0])
        epochs = self.tasks[self._task_index].config.epochs
        target = np.nan if self._target is None else self._target
        reward, reached = self._reward_fn(
            RewardInput(
                epoch=np.array([self._epoch]),
                epochs=np.array([epochs]),
                first_valid=np.array([self._first_valid]),
                prev_valid=np.array([self._valid]),
                valid=stats.valid_loss,
                diverged=stats.diverged,
                target=np.array([target], dtype=np.float64),
                returns=np.array([self._return]),
            ),
            self.divergence_penalty,
        )
        obs = self.observer.update(stats, lr)[0]
        self._valid = float(stats.valid_loss[0])
        r = float(reward[0])
        self._return += r
        terminated = bool(stats.diverged[0] or reached[0])
        truncated = bool(not terminated and self._epoch >= epochs)
        self._done = terminated or truncated
        info = self._info(stats)
        self._history.append(info)
        return obs, r, terminated, truncated, info

    def render(self) -> str | np.ndarray | None:
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi' or 'rgb_array'")
            return None
        if self.render_mode == "ansi":
            h = self._history[-1] if self._history else {}
            return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in h.items()) + "\n"
        return _plot_history(self._history)

    def close(self) -> None:
        self._engines.clear()
        self._engine = None

    # -- helpers ---------------------------------------------------------------------------

    @property
    def task(self) -> Task:
        """The task of the current (or next) episode."""
        return self.tasks[self._task_index]

    def _choose_task(self, options: dict[str, Any]) -> int:
        unknown = sorted(set(options) - {"task"})
        if unknown:
            raise ValueError(f"unknown reset option(s) {', '.join(unknown)}; allowed: task")
        if "task" in options:
            names = [t.name for t in self.tasks]
            if options["task"] not in names:
                raise ValueError(f"reset option task={options['task']!r} is not one of this env's tasks: {', '.join(names)}")
            return names.index(options["task"])
        return int(self.np_random.integers(len(self.tasks))) if len(self.tasks) > 1 else 0

    def _engine_for(self, index: int) -> Engine:
        if index not in self._engines:
            self._engines[index] = Engine(self.tasks[index], n_runs=1, device=self.device, dtype=self.dtype)
        return self._engines[index]

    def _info(self, stats: EpochStats) -> dict[str, Any]:
        info: dict[str, Any] = {
            "task": self.task.name,
            "run_seed": self._run_seed,
            "epoch": self._epoch,
            "lr": self._lr,
            "train_loss": float(stats.train_loss[0]),
            "train_loss_std": float(stats.train_loss_std[0]),
            "valid_loss": float(stats.valid_loss[0]),
        }
        for name, values in stats.metrics.items():
            info[f"valid_{name}"] = float(values[0])
        info["diverged"] = bool(stats.diverged[0])
        return info


def _plot_history(history: list[dict[str, Any]]) -> np.ndarray:
    """RGB array of the LR and loss curves of an episode (matplotlib, imported on use)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3), dpi=80)
    canvas = FigureCanvasAgg(fig)
    ax_lr, ax_loss = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    ax_lr.semilogy(epochs[1:], [h["lr"] for h in history[1:]], marker=".")
    ax_lr.set(xlabel="epoch", title="learning rate")
    ax_loss.semilogy(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.semilogy(epochs, [h["valid_loss"] for h in history], label="valid")
    ax_loss.set(xlabel="epoch", title="loss")
    ax_loss.legend()
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
