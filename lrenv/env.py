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
from lrenv.engine import Engine
from lrenv.episodes import EpisodeBatch
from lrenv.features import Observer
from lrenv.registry import make_task
from lrenv.rewards import get_reward, resolve_target
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
        get_reward(reward)
        for t in self.tasks:
            resolve_target(reward, target_loss, t.config.target_loss, t.name)
        self.reward_name = reward
        self.target_loss = target_loss
        self.divergence_penalty = float(divergence_penalty)
        self.features = features
        self.device = device
        self.dtype = DTYPES[dtype]
        self.actions = ActionMapping(action_mode, relative_factor)
        self.action_space = self.actions.space
        self.observation_space = Observer(features).space
        self.render_mode = render_mode
        self._default_seed = seed
        self._batches: dict[int, EpisodeBatch] = {}
        self._task_index = 0
        self._history: list[dict[str, Any]] = []

    # -- Gymnasium API ---------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is None and self._default_seed is not None:
            seed, self._default_seed = self._default_seed, None
        super().reset(seed=seed)
        self._task_index = self._choose_task(options or {})
        episode = self._episode()
        obs, infos = episode.start([0], [int(self.np_random.integers(2**31 - 1))])
        self._history = infos
        return obs[0], infos[0]

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        episode = self._batches.get(self._task_index)
        if episode is None or episode.done[0]:
            raise RuntimeError("the episode has ended (or never started): call reset() before step()")
        obs, reward, terminated, truncated, infos = episode.step(np.asarray(action, dtype=np.float64).reshape(1, -1))
        self._history.append(infos[0])
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), infos[0]

    def render(self) -> str | np.ndarray | None:
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi' or 'rgb_array'")
            return None
        if self.render_mode == "ansi":
            h = self._history[-1] if self._history else {}
            return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in h.items()) + "\n"
        return _plot_history(self._history)

    def close(self) -> None:
        self._batches.clear()

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

    def _episode(self) -> EpisodeBatch:
        """The episode bookkeeping (and engine) of the current task, created on first use."""
        index = self._task_index
        if index not in self._batches:
            engine = Engine(self.tasks[index], n_runs=1, device=self.device, dtype=self.dtype)
            self._batches[index] = EpisodeBatch(
                engine, self.features, self.actions, self.reward_name, self.divergence_penalty, self.target_loss
            )
        return self._batches[index]


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
