"""What a comparison runs: seeds, methods, and the populations (jobs) that train them.

A seed is an env seed: on seed ``s`` every method sees exactly the episode
``LREnv(task).reset(seed=s)`` gives (:func:`env_run_seed`), so differences between methods
are paired. A :class:`Job` is one population of the engine: :class:`Slot` s of one task that
share their env settings and optimizer, each with its own policy and seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gymnasium.utils import seeding

from lrenv.env.config import EnvConfig
from lrenv.task import Task

#: Defaults of the protocol (documented in the README's "Comparing schedules").
DEFAULT_TRIALS = 6
DEFAULT_TUNE_SEEDS = 5
DEFAULT_EVAL_SEEDS = 10
#: Evaluation seeds are ``EVAL_SEED_BASE + i``, tuning seeds ``TUNE_SEED_BASE + i``: far from
#: the small seeds training scripts use, so no method is evaluated on runs it trained on.
EVAL_SEED_BASE = 10_000
TUNE_SEED_BASE = 20_000
#: Seeds of the experiments that fit a Ψ (agents.distill's episodes, agents.surface's runs): apart
#: from both, so a fitted schedule is never scored on the runs it was fitted to.
DISTILL_SEED_BASE = 30_000
SURFACE_SEED_BASE = 40_000
DEFAULT_POPULATION = 32
#: The name of the analytically optimal reference schedule.
OPTIMAL = "optimal"


def env_run_seed(seed: int) -> int:
    """The run seed ``LREnv(task).reset(seed=seed)`` draws for a single-task env."""
    rng, _ = seeding.np_random(int(seed))
    return int(rng.integers(2**31 - 1))


def eval_seeds(n: int) -> list[int]:
    """The first ``n`` evaluation seeds."""
    return [EVAL_SEED_BASE + i for i in range(n)]


def tune_seeds(n: int) -> list[int]:
    """The first ``n`` tuning seeds."""
    return [TUNE_SEED_BASE + i for i in range(n)]


@dataclass(frozen=True)
class PolicyRef:
    """How a worker gets a slot's policy: a baseline by name, a fixed LR list, a run dir, or an object."""

    kind: str  # "baseline", "fixed", "run", "object"
    name: str = ""
    params: tuple[tuple[str, float], ...] = ()
    lrs: tuple[float, ...] = ()
    run_dir: str = ""
    obj: Any = field(default=None, compare=False, hash=False)

    def key(self) -> tuple:
        return (self.kind, self.name, self.params, self.lrs, self.run_dir, id(self.obj) if self.kind == "object" else 0)


@dataclass(frozen=True)
class Slot:
    """One episode of a population: which method, with which parameters, on which env seed."""

    method: str
    params: tuple[tuple[str, float], ...]
    seed: int
    role: str  # "tune" or "eval"
    policy: PolicyRef


@dataclass
class Job:
    """One population: slots of one task that share their env settings and optimizer.

    Attributes:
        task: A registered task name or a Task object.
        env: Observation and action settings, device, dtype, divergence penalty and task
            overrides (the reward is always ``log_progress``: scores are ``log(L_0/L_T)``).
        slots: The episodes.
        optimizer: Overrides the task's optimizer (e.g. ``"schedulefree_sgd"``); ``None``: the task's.
        batched: Passed to the engine (``None``: stack the runs where the model allows it).
    """

    task: str | Task
    env: EnvConfig
    slots: list[Slot]
    optimizer: str | None = None
    batched: bool | None = None

    def make_task(self) -> Task:
        """The job's task with its overrides applied."""
        from lrenv.registry import make_task

        overrides = self.env.task_overrides
        if self.optimizer is not None:
            overrides["optimizer"] = self.optimizer
        return make_task(self.task, **overrides)


@dataclass
class Contender:
    """A method evaluated without per-task tuning: a learned policy or a reference schedule.

    Attributes:
        name: Its label in tables (must differ from every baseline's).
        policy: An object with ``predict(obs, deterministic=True)`` returning actions
            ``(n, 1)`` (or SB3's ``(actions, state)``); used in this process.
        run_dir: A trained run that :func:`lrenv.load_policy` loads; worker processes load it
            from there (so the policy need not be picklable).
        env: The env settings it was trained with; only its features and action mapping
            (mode, factor, base shape: ``compare.POLICY_SETTINGS``) apply: every method is evaluated on the same tasks, with the comparison's device,
            dtype, divergence penalty and task overrides.
        kind: ``"learned"`` or ``"reference"``.
        tasks: Tasks it applies to (``None``: all).
        lrs: For a fixed reference schedule per task: ``{task: [lr per epoch]}``.
        trained_on: Tasks a learned policy was trained on (tables mark the others held-out).
    """

    name: str
    policy: Any = None
    run_dir: str | None = None
    env: EnvConfig = field(default_factory=EnvConfig)
    kind: str = "learned"
    tasks: tuple[str, ...] | None = None
    lrs: dict[str, list[float]] | None = None
    trained_on: tuple[str, ...] | None = None


def load_run(run_dir: str | os.PathLike[str]) -> Contender:
    """A trained run as a :class:`Contender`, through :func:`lrenv.load_policy`.

    ``run_dir`` is anything :func:`lrenv.load_policy` loads: a run or checkpoint folder,
    ``"default"``, or a closed-form formula (``"formula"``, a ``formula.json``, a folder with
    one). The contender acts through the policy's env settings (a formula's: its features,
    ``"multiplier"`` actions with its factor, a constant base); worker processes load it again
    from ``run_dir``.
    """
    from lrenv.policy import load_policy

    policy = load_policy(str(run_dir))
    name = str(policy.name or Path(run_dir).name)
    trained_on = policy.tasks or None
    return Contender(
        name=name, policy=policy, run_dir=str(run_dir), env=policy.env_config, kind="learned", trained_on=tuple(trained_on) if trained_on else None
    )


#: ``"format"`` of a fixed-schedule file (:func:`load_schedule_file`), and the version this lrenv reads.
SCHEDULE_FORMAT = "lrenv-schedule"
SCHEDULE_VERSION = 1


def load_schedule_file(path: str | os.PathLike[str]) -> Contender:
    """A fixed LR schedule from a JSON file, as a reference :class:`Contender` on its one task.

    The file (written by a fit elsewhere, e.g. of a law or a network to a policy's LRs)::

        {"format": "lrenv-schedule", "version": 1, "name": "law-fit", "task": "MNIST1D-MLP-v0",
         "lrs": [0.1, 0.09, ...]}                 # the LR of each epoch, one per epoch of the task

    ``name`` defaults to the file's stem; other keys (metadata) are ignored. In the harness the
    LRs are applied as given (clipped to the task's ``lr_range``, as every schedule is); their
    number must be the task's epoch budget.

    Raises:
        FileNotFoundError: There is no such file.
        lrenv.PolicyFileError: It is not valid JSON, not a schedule file, of another version, or
            a field is invalid (``lrs`` must be positive finite numbers); the message names the
            file and the field.
    """
    from lrenv.run_dir import PolicyFileError, read_json, require_keys
    from lrenv.task import is_real, to_float

    path = Path(path)
    data = require_keys(read_json(path), path, ("format", "version", "task", "lrs"), f"{SCHEDULE_FORMAT} file")
    if data["format"] != SCHEDULE_FORMAT:
        raise PolicyFileError(f"{path}: format is {data['format']!r}, not {SCHEDULE_FORMAT!r}: it is not an lrenv schedule file")
    version = data["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version != SCHEDULE_VERSION:
        raise PolicyFileError(f"{path}: version {version!r}; this lrenv reads {SCHEDULE_FORMAT} version {SCHEDULE_VERSION}")
    task, name, lrs = data["task"], data.get("name", path.stem), data["lrs"]
    if not isinstance(task, str) or not task:
        raise PolicyFileError(f"{path}: task must be a task name, got {task!r}")
    if not isinstance(name, str) or not name:
        raise PolicyFileError(f"{path}: name must be a non-empty string, got {name!r}")
    if not isinstance(lrs, list) or not lrs:
        raise PolicyFileError(f"{path}: lrs must be a non-empty list of learning rates (one per epoch), got {lrs!r}")
    bad = [(i, v) for i, v in enumerate(lrs) if not (is_real(v) and 0 < to_float(v) < float("inf"))]
    if bad:
        i, v = bad[0]
        raise PolicyFileError(f"{path}: lrs must be positive finite numbers; lrs[{i}] is {v!r} ({len(bad)} bad value(s))")
    return Contender(name=name, kind="reference", tasks=(task,), lrs={task: [float(v) for v in lrs]})


def load_contender(path: str | os.PathLike[str]) -> Contender:
    """What ``agents.evaluate --runs`` accepts, as a :class:`Contender`.

    A ``.json`` file whose ``"format"`` is ``"lrenv-schedule"`` is a fixed schedule
    (:func:`load_schedule_file`); anything else goes to :func:`load_run`: a run or checkpoint
    folder, ``"default"``, ``"formula"``, a formula file (``"lrenv-formula"``) or a folder
    holding one.
    """
    from lrenv.run_dir import read_json

    file = Path(path)
    if file.suffix == ".json" and file.is_file():
        data = read_json(file)
        if isinstance(data, dict) and data.get("format") == SCHEDULE_FORMAT:
            return load_schedule_file(file)
    return load_run(path)


def optimal_contender(task: Task) -> Contender | None:
    """The task's analytically optimal schedule (``task.optimal_schedule()``) as a reference, if it has one."""
    schedule = getattr(task, "optimal_schedule", None)
    if not callable(schedule):
        return None
    try:
        lrs = [float(v) for v in schedule()]
    except ValueError:  # e.g. the optimizer was overridden: the closed form does not apply
        return None
    return Contender(name=OPTIMAL, kind="reference", tasks=(task.name,), lrs={task.name: lrs})
