"""LREnv: choose the learning rate of each epoch of an inner PyTorch training run."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from lrenv.engine import Engine
from lrenv.env.config import EnvConfig
from lrenv.env.episodes import EpisodeBatch
from lrenv.env.features import Observer
from lrenv.env.rewards import resolve_target
from lrenv.registry import make_task
from lrenv.task import Task

#: LREnv's own arguments; every other keyword is a field of :class:`EnvConfig`.
ENV_ARGUMENTS = ("task", "seed", "render_mode", "config")


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
    clipped to the range. ``step`` takes a real number of shape ``()``, ``(1,)`` or ``(1, 1)``
    (float or int array, Python number, tensor). Out-of-range actions are clipped; non-finite
    ones or another shape raise ValueError; bools, strings and object arrays raise TypeError.

    ## Observation space
    A float32 vector with finite bounds, scale-free so one policy transfers across tasks;
    see :mod:`lrenv.env.features` for the tables. ``features="standard"`` (8 values: progress
    i/T, log LR in range, log train and validation loss relative to epoch 0, their last
    changes, within-epoch batch-loss spread, generalisation gap) or ``"minimal"``
    (progress and log relative validation loss: Ψ(ε, i) exactly as posed).

    ## Rewards
    ``reward="log_progress"`` (default): ``log(L_{t-1}/L_t)`` on validation loss, so an
    episode's return is ``log(L_0/L_T)``. ``"final_loss"``: the same return, paid at the end.
    ``"time_to_target"``: -1 per epoch until the validation loss reaches ``target_loss``.
    See :mod:`lrenv.env.rewards`, including the divergence penalty.

    ## Episode end
    ``terminated``: the epoch budget T of the task is used up, the run diverged (a loss is
    non-finite or exceeds ``divergence_factor`` times its initial value; return exactly
    ``-divergence_penalty`` for the loss rewards), or the target was reached under
    ``"time_to_target"``. The budget is part of the problem (progress i/T is observed), so its
    end is a termination, never a ``truncated`` time limit: there is no value after it to
    bootstrap. ``truncated`` stays ``False``. Observations stay finite in every case.

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
        render_mode: ``None``, ``"ansi"`` (a text line per epoch) or ``"rgb_array"`` (LR and
            loss curves of the episode so far).
        config: An :class:`lrenv.EnvConfig`; keyword settings below are applied on top of it.
        **settings: Fields of :class:`lrenv.EnvConfig`: ``features``, ``action_mode``,
            ``relative_factor``, ``reward``, ``divergence_penalty``, ``target_loss``
            (of ``"time_to_target"``; default: each task's), ``task_config`` (TaskConfig
            overrides for every task, e.g. ``{"epochs": 10}``), ``dtype``, ``device``.
            An unknown one is a ``TypeError`` that lists the allowed arguments.

    ## Version history
    * v0: initial version.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(
        self,
        task: str | Task | Sequence[str | Task] = "MNIST1D-MLP-v0",
        *,
        seed: int | None = None,
        render_mode: str | None = None,
        config: EnvConfig | None = None,
        **settings: Any,
    ) -> None:
        self.config = EnvConfig.from_kwargs(settings, base=config, owner="LREnv", other_arguments=ENV_ARGUMENTS)
        seed = check_seed(seed, "LREnv")
        if render_mode is not None and not (isinstance(render_mode, str) and render_mode in self.metadata["render_modes"]):
            raise ValueError(f"unknown render_mode {render_mode!r}; choose None or one of {', '.join(self.metadata['render_modes'])}")
        if not isinstance(task, (str, Task, Iterable)):
            raise TypeError(f"task must be a task name, an lrenv.Task or a list of them, got {task!r}")
        specs = [task] if isinstance(task, (str, Task)) else list(task)
        if not specs:
            raise ValueError("task must name at least one task")
        self.tasks: list[Task] = [make_task(t, **self.config.task_overrides) for t in specs]
        for t in self.tasks:
            resolve_target(self.config.reward, self.config.target_loss, t.config.target_loss, t.name)
        self.actions = self.config.action_mapping()
        self.action_space = self.actions.space
        self.observation_space = Observer(self.config.features).space
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
        obs, reward, terminated, truncated, infos = episode.step(action)  # the action mapping checks the action
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
            engine = Engine(self.tasks[index], n_runs=1, device=self.config.device, dtype=self.config.torch_dtype)
            self._batches[index] = EpisodeBatch(engine, self.config)
        return self._batches[index]


def check_seed(seed: object, owner: str) -> int | None:
    """A seed as None or a Python int >= 0 (gymnasium takes no numpy ints); checked when given, not at reset."""
    if seed is not None and not (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0):
        raise ValueError(f"{owner}: seed must be None or a non-negative integer, got {seed!r}")
    return None if seed is None else int(seed)


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
