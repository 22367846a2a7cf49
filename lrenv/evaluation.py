"""A fair comparison of learning-rate schedules: equal-budget tuning, paired evaluation, statistics.

:func:`compare` runs, for each task:

1. **Tuning** (baselines only). Each baseline of :data:`lrenv.baselines.BASELINES` gets the
   same budget, ``trials`` settings (:func:`lrenv.baselines.tuning_grid`: a log grid over
   its peak LR and, where it has one, its second parameter), each run on every tuning
   seed. A setting's score is its mean episode return on those seeds, ``mean log(L_0/L_T)``
   of the validation loss (a diverged run scores ``-divergence_penalty``, as in the env);
   the best-scoring setting (first on ties) is the tuned baseline.
2. **Evaluation.** Every tuned baseline, every contender (learned policies, which get no
   per-task tuning, and reference schedules such as the noisy quadratic's analytically
   optimal one) runs on the evaluation seeds, which are disjoint from the tuning seeds.

A seed is an env seed: on seed ``s`` every method sees exactly the episode
``LREnv(task).reset(seed=s)`` gives (the same run seed, so the same initialisation and
data order; :func:`env_run_seed`), so differences between methods are paired.

Episodes run as populations of the engine (:class:`lrenv.Engine`, one stacked computation
where the model allows it), each slot with its own policy and seed, driven epoch by epoch
through :class:`lrenv.episodes.EpisodeBatch`, the bookkeeping ``LREnv`` itself uses. Slots
are grouped by what a population must share (features, action mapping, optimizer) and cut
into populations of at most ``population`` runs; populations run in worker processes
(``workers``) and are cached on disk by a key of everything that determines them,
including the source of lrenv and the built-in tasks.

What is reported per (task, method), over the evaluation seeds (:meth:`Results.summary`):

- *accurate*: final validation loss and accuracy (mean ± sample std); the paired
  difference of the final validation loss to the **best tuned baseline** (the baseline
  with the best tuning score; ``schedule_free``, which changes the optimizer, is a reference
  and not eligible) with its standard error; the win rate (share of seeds with a lower final
  loss than the best baseline, ties half); the rank of the mean final loss among all methods.
- *fast*: epochs to reach the task's ``target_loss`` on validation (median over seeds,
  ``inf`` when most never reach it) and the share that reach it.
- *reliable*: the share of seeds that reach the task's **acceptance level** — the test
  loss at the end is at most the task's ``target_loss`` (tasks without a test split, such
  as the noisy quadratic, whose validation loss is its exact risk, use the validation
  loss) — and the divergence rate.

A diverged run counts as the env counts it: its final validation loss is
``L_0 · e^penalty`` (return ``-penalty``), its accuracy the last one measured (0 if not a
number), and it is never accepted.
:meth:`Results.aggregate` ranks methods across tasks (median and mean rank) and gives the
ratios of a performance profile (mean final loss / best mean final loss per task).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import inspect
import json
import math
import multiprocessing
import os
import queue as queue_module
import textwrap
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium.utils import seeding

from lrenv.actions import ActionMapping
from lrenv.baselines import BASELINES, FixedSchedule, ScheduleFreeEngine, SchedulePolicy, get_baseline, make_policy, tuning_grid
from lrenv.engine import Engine, resolve_device
from lrenv.env import DTYPES
from lrenv.episodes import EpisodeBatch
from lrenv.features import FEATURE_SETS
from lrenv.registry import make_task
from lrenv.task import Task, TaskConfig

#: Defaults of the protocol (documented in the README's "Comparing schedules").
DEFAULT_TRIALS = 6
DEFAULT_TUNE_SEEDS = 5
DEFAULT_EVAL_SEEDS = 10
#: Evaluation seeds are ``EVAL_SEED_BASE + i``, tuning seeds ``TUNE_SEED_BASE + i``: far from
#: the small seeds training scripts use, so no method is evaluated on runs it trained on.
EVAL_SEED_BASE = 10_000
TUNE_SEED_BASE = 20_000
DEFAULT_POPULATION = 32
#: Method kinds: tuned baselines, learned policies, references (optimal schedule, schedule-free).
KINDS = ("baseline", "learned", "reference")
OPTIMAL = "optimal"
#: Bump when what a cached population holds changes.
CACHE_FORMAT = 1


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


# -- what runs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvSpec:
    """What the runs of one population share: the env's observation and action settings.

    Attributes:
        features: ``"standard"`` or ``"minimal"``.
        action_mode: ``"absolute"`` or ``"relative"``.
        relative_factor: f of relative mode.
        optimizer: ``None`` (the task's own) or ``"schedulefree"``.
    """

    features: str = "standard"
    action_mode: str = "absolute"
    relative_factor: float = 2.0
    optimizer: str | None = None

    def __post_init__(self) -> None:
        if self.features not in FEATURE_SETS:
            raise ValueError(f"unknown feature set {self.features!r}; choose one of {', '.join(FEATURE_SETS)}")
        ActionMapping(self.action_mode, self.relative_factor)  # validates both
        if self.optimizer not in (None, "schedulefree"):
            raise ValueError(f"unknown optimizer variant {self.optimizer!r}; choose None or 'schedulefree'")


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
    """One population: slots of one task that share an :class:`EnvSpec`."""

    task: str | Task
    task_config: dict[str, Any]
    env: EnvSpec
    slots: list[Slot]
    device: str = "cpu"
    dtype: str = "float32"
    divergence_penalty: float = 2.0
    batched: bool | None = None


@dataclass
class Contender:
    """A method evaluated without per-task tuning: a learned policy or a reference schedule.

    Attributes:
        name: Its label in tables (must differ from every baseline's).
        policy: An object with ``predict(obs, deterministic=True)`` returning actions
            ``(n, 1)`` (or SB3's ``(actions, state)``); used in this process.
        run_dir: A trained run that :func:`lrenv.load_policy` loads; worker processes load it
            from there (so the policy need not be picklable).
        env: The observation and action settings it was trained with.
        kind: ``"learned"`` or ``"reference"``.
        tasks: Tasks it applies to (``None``: all).
        lrs: For a fixed reference schedule per task: ``{task: [lr per epoch]}``.
        trained_on: Tasks a learned policy was trained on (tables mark the others held-out).
    """

    name: str
    policy: Any = None
    run_dir: str | None = None
    env: EnvSpec = field(default_factory=EnvSpec)
    kind: str = "learned"
    tasks: tuple[str, ...] | None = None
    lrs: dict[str, list[float]] | None = None
    trained_on: tuple[str, ...] | None = None


def load_run(run_dir: str | os.PathLike[str]) -> Contender:
    """A trained run as a :class:`Contender`, through ``lrenv.load_policy(run_dir)``.

    The run's ``env_kwargs`` give its feature set and action mapping; its other env settings
    (reward, task_config, ...) do not apply: every method is evaluated on the same tasks.
    """
    import lrenv

    loader = getattr(lrenv, "load_policy", None)
    if loader is None:
        raise RuntimeError(
            "lrenv.load_policy is not available in this version of lrenv (it comes with agents/train.py); "
            "pass policies as lrenv.evaluation.Contender(name, policy=...) instead"
        )
    policy = loader(str(run_dir))
    kwargs = dict(getattr(policy, "env_kwargs", {}) or {})
    env = EnvSpec(
        features=kwargs.get("features", "standard"),
        action_mode=kwargs.get("action_mode", "absolute"),
        relative_factor=float(kwargs.get("relative_factor", 2.0)),
    )
    name = str(getattr(policy, "name", "") or Path(run_dir).name)
    trained_on = getattr(policy, "tasks", None) or (getattr(policy, "config", None) or {}).get("tasks")
    return Contender(
        name=name, policy=policy, run_dir=str(run_dir), env=env, kind="learned", trained_on=tuple(trained_on) if trained_on else None
    )


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


# -- one episode's record -------------------------------------------------------------------


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


# -- running one population -------------------------------------------------------------------

_RUN_POLICIES: dict[str, Any] = {}  # run dir -> loaded policy, per process


def _build_policy(ref: PolicyRef, config: TaskConfig, features: str) -> Any:
    if ref.kind == "baseline":
        return make_policy(ref.name, config, features=features, **dict(ref.params))
    if ref.kind == "fixed":
        if len(ref.lrs) != config.epochs:
            raise ValueError(f"a fixed schedule of {len(ref.lrs)} LRs cannot drive a task of {config.epochs} epochs")
        return FixedSchedule(ref.lrs, config.lr_range, features=features)
    if ref.kind == "run":
        if ref.run_dir not in _RUN_POLICIES:
            import lrenv

            _RUN_POLICIES[ref.run_dir] = lrenv.load_policy(ref.run_dir)  # type: ignore[attr-defined]
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
    task = make_task(job.task, **job.task_config)
    config = task.config
    n = len(job.slots)
    engine_type = ScheduleFreeEngine if job.env.optimizer == "schedulefree" else Engine
    with warnings.catch_warnings():  # the loop fallback of unbatchable models is expected here
        warnings.simplefilter("ignore")
        engine = engine_type(task, n_runs=n, device=job.device, dtype=DTYPES[job.dtype], batched=job.batched)
    episodes = EpisodeBatch(
        engine, job.env.features, ActionMapping(job.env.action_mode, job.env.relative_factor), "log_progress", job.divergence_penalty
    )
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
    for _ in range(config.epochs):
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
        ended = alive & terminated
        if ended.any():  # a diverged run: record it, restart its slot as an idle dummy
            for k in np.flatnonzero(ended):
                records[k]["diverged"] = True
            alive &= ~ended
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
            divergence_penalty=job.divergence_penalty,
            target=config.target_loss,
        )
        for k, (slot, rec) in enumerate(zip(job.slots, records))
    ]


def _acc(info: dict[str, Any]) -> list[float]:
    return [float(info["valid_accuracy"])] if "valid_accuracy" in info else []


#: The code of an episode, part of the cache key (see :func:`_source_digest`).
_EPISODE_CODE = (run_job, _build_policy, _predict, _acc, Episode)


# -- worker processes and the cache ------------------------------------------------------------

_PROGRESS: Any = None  # a multiprocessing queue in worker processes


def _worker_init(progress: Any) -> None:
    global _PROGRESS
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    _PROGRESS = progress


def _worker_run(job: Job) -> list[dict[str, Any]]:
    report = (lambda n: _PROGRESS.put(n)) if _PROGRESS is not None else None
    return [e.to_dict() for e in run_job(job, report)]


#: The modules whose code decides what an episode does (the data path); cached results are
#: keyed by their source, so an edit to any of them recomputes everything.
DATA_PATH_MODULES = ("actions", "baselines", "engine", "env", "episodes", "features", "optim", "registry", "rewards", "stacked_layers", "stand_ins", "task", "trainers")


def _source_digest() -> str:
    """A digest of the data path's code: lrenv's modules above, this module's episode runner, the built-in tasks.

    Code, not text: docstrings, comments and layout do not count, so editing documentation
    keeps the cache.
    """
    import tasks as builtin

    digest = hashlib.sha256()
    package = Path(__file__).parent
    files = [package / f"{m}.py" for m in DATA_PATH_MODULES] + sorted(Path(builtin.__file__).parent.rglob("*.py"))
    for path in files:
        digest.update(path.name.encode())
        digest.update(_code_of(path.read_text()))
    for obj in _EPISODE_CODE:
        digest.update(_code_of(textwrap.dedent(inspect.getsource(obj))))
    return digest.hexdigest()


def _code_of(source: str) -> bytes:
    """The syntax tree of ``source`` without docstrings, as bytes."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False).encode()


def _job_key(job: Job, digest: str) -> str | None:
    """A cache key of everything that determines a population's results; ``None`` if not cacheable."""
    if not isinstance(job.task, str) or any(s.policy.kind not in ("baseline", "fixed") for s in job.slots):
        return None  # custom task objects and learned policies: their code is not in the digest
    spec = {
        "format": CACHE_FORMAT,
        "source": digest,
        "torch": torch.__version__,
        "task": job.task,
        "task_config": sorted(job.task_config.items()),
        "env": dataclasses.asdict(job.env),
        "slots": [[s.method, s.params, s.seed, s.role, s.policy.kind, s.policy.name, s.policy.lrs] for s in job.slots],
        "device": resolve_device(job.device).type,
        "dtype": job.dtype,
        "penalty": job.divergence_penalty,
        "batched": job.batched,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def default_cache_dir() -> Path:
    """``$LRENV_CACHE_DIR/evaluate`` (else ``$XDG_CACHE_HOME/lrenv/evaluate`` or ``~/.cache/lrenv/evaluate``)."""
    from tasks._cache import cache_dir

    return Path(cache_dir()) / "evaluate"


class _Runner:
    """Runs jobs in this process or in worker processes, with a progress bar and a disk cache."""

    def __init__(self, workers: int, cache_dir: Path | None, progress: bool, total_epochs: int) -> None:
        self.workers = workers
        self.cache_dir = cache_dir
        self.digest = _source_digest() if cache_dir is not None else ""
        self.bar = _progress_bar(total_epochs, progress)
        self.pool: ProcessPoolExecutor | None = None
        self.queue: Any = None

    def __enter__(self) -> _Runner:
        if self.workers > 0:
            ctx = multiprocessing.get_context("spawn")
            self.queue = ctx.Queue()
            self.pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init, initargs=(self.queue,))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.bar.close()

    def run(self, stages: dict[str, list[Job]], follow_up: Callable[[str, list[Episode]], list[Job]]) -> list[Episode]:
        """Run each task's first-stage jobs, then the jobs ``follow_up(task, its episodes)`` returns.

        A task's second stage starts as soon as its first is done, while other tasks go on.
        Returns every episode, in task order and, within a task, in job order.
        """
        done: dict[str, list[list[Episode] | None]] = {}
        second: set[str] = set()
        pending: dict[Future, tuple[str, int, str | None]] = {}
        waiting: list[tuple[int, int, str, int, Job, str | None]] = []  # (stage, order, task, index, job, key)

        def submit(task: str, jobs: list[Job], stage: int) -> None:
            base = len(done.setdefault(task, []))
            done[task].extend([None] * len(jobs))
            for i, job in enumerate(jobs, start=base):
                key = _job_key(job, self.digest) if self.cache_dir is not None else None
                cached = self._load(key)
                if cached is not None:
                    done[task][i] = cached
                    self.bar.update(len(job.slots) * _epochs(job))
                elif self.pool is None:
                    done[task][i] = run_job(job, self.bar.update)
                    self._store(key, done[task][i])
                else:
                    waiting.append((-stage, len(waiting), task, i, job, key))
            advance(task)

        def advance(task: str) -> None:
            if task not in second and all(r is not None for r in done[task]):
                second.add(task)
                submit(task, follow_up(task, [e for r in done[task] for e in r or []]), stage=2)

        def feed() -> None:
            # second stages first (a task's results complete early), then first stages in task order;
            # a few jobs in flight per worker keep the processes busy without fixing the order early
            assert self.pool is not None
            waiting.sort(key=lambda w: (w[0], w[1]))
            while waiting and len(pending) < 2 * self.workers:
                _, _, task, i, job, key = waiting.pop(0)
                pending[self.pool.submit(_worker_run, job)] = (task, i, key)

        for task, jobs in stages.items():
            submit(task, jobs, stage=1)
        while waiting or pending:
            feed()
            finished, _ = wait(list(pending), timeout=0.25, return_when=FIRST_COMPLETED)
            self._drain()
            for future in finished:
                task, i, key = pending.pop(future)
                done[task][i] = [Episode(**e) for e in future.result()]
                self._store(key, done[task][i])
                advance(task)
        self._drain()
        return [e for task in stages for r in done[task] for e in r or []]

    def _drain(self) -> None:
        if self.queue is None:
            return
        with contextlib.suppress(queue_module.Empty):
            while True:
                self.bar.update(self.queue.get_nowait())

    def _path(self, key: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / key[:2] / f"{key}.json"

    def _load(self, key: str | None) -> list[Episode] | None:
        if key is None or not self._path(key).exists():
            return None
        try:
            return [Episode(**e) for e in json.loads(self._path(key).read_text())]
        except (OSError, ValueError, TypeError):  # a damaged entry is recomputed
            return None

    def _store(self, key: str | None, episodes: list[Episode] | None) -> None:
        if key is None or episodes is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps([e.to_dict() for e in episodes]))
        tmp.replace(path)  # atomic: a concurrent reader sees all or nothing


def _epochs(job: Job) -> int:
    return make_task(job.task, **job.task_config).config.epochs


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="epoch", desc="inner epochs", smoothing=0.05, dynamic_ncols=True)


# -- the comparison -----------------------------------------------------------------------------


def _chunks(slots: list[Slot], size: int) -> Iterable[list[Slot]]:
    for start in range(0, len(slots), size):
        yield slots[start : start + size]


def _params(d: dict[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted((k, float(v)) for k, v in d.items()))


def compare(
    tasks: Sequence[str | Task],
    *,
    baselines: Sequence[str] | None = None,
    contenders: Sequence[Contender] = (),
    optimal: bool = True,
    eval_seeds: int | Sequence[int] = DEFAULT_EVAL_SEEDS,
    tune_seeds: int | Sequence[int] = DEFAULT_TUNE_SEEDS,
    trials: int = DEFAULT_TRIALS,
    task_config: dict[str, Any] | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    divergence_penalty: float = 2.0,
    workers: int = 0,
    population: int = DEFAULT_POPULATION,
    batched: bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Results:
    """Tune every baseline on every task with the same budget, then evaluate all methods on paired seeds.

    Args:
        tasks: Task names or :class:`lrenv.Task` objects.
        baselines: Names from :data:`lrenv.baselines.BASELINES` (default: all).
        contenders: Learned policies and reference schedules (no tuning), e.g. :func:`load_run`.
        optimal: Add the analytically optimal schedule on tasks that have one
            (``task.optimal_schedule()``, e.g. ``NoisyQuadratic-v0``).
        eval_seeds: Evaluation env seeds, or how many (:func:`eval_seeds`).
        tune_seeds: Tuning env seeds, or how many (:func:`tune_seeds`); disjoint from evaluation.
        trials: Tuning budget per baseline and task (an even number, see
            :func:`lrenv.baselines.tuning_grid`).
        task_config: :class:`lrenv.TaskConfig` overrides for every task (e.g. ``{"epochs": 5}``).
        device: ``"cpu"``, ``"cuda"``, ``"auto"``.
        dtype: ``"float32"`` or ``"float64"``.
        divergence_penalty: Return of a diverged episode is ``-divergence_penalty`` (as in LREnv).
        workers: Worker processes (0: run in this process).
        population: Most runs trained as one population.
        batched: Passed to the engine (``None``: stack runs where the model allows it).
        cache_dir: Cache of finished populations (``None``: no cache); see :func:`default_cache_dir`.
        progress: Show a progress bar (tqdm) of inner epochs.

    Returns:
        The episodes and tuning results, with statistics methods.
    """
    baselines = list(BASELINES) if baselines is None else list(baselines)
    for name in baselines:
        get_baseline(name)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    resolve_device(device)  # a bad device is an error now, not in a worker
    if not isinstance(population, int) or population < 1:
        raise ValueError(f"population must be a positive integer, got {population!r}")
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    evals = _seed_list(eval_seeds, eval_seeds_fn=True)
    tunes = _seed_list(tune_seeds, eval_seeds_fn=False)
    if baselines and not tunes:
        raise ValueError("tuning needs at least one tuning seed")
    if not evals:
        raise ValueError("evaluation needs at least one evaluation seed")
    overlap = sorted(set(evals) & set(tunes))
    if overlap:
        raise ValueError(f"tuning and evaluation seeds must be disjoint; both contain {overlap[:5]}")
    names = [c.name for c in contenders]
    clash = sorted((set(names) & set(BASELINES)) | {n for n in names if names.count(n) > 1} | ({OPTIMAL} & set(names) if optimal else set()))
    if clash:
        raise ValueError(f"contender names must be unique and differ from the baselines' and {OPTIMAL!r}: {', '.join(clash)}")
    task_config = dict(task_config or {})
    task_objs = [make_task(t, **task_config) for t in tasks]
    if not task_objs:
        raise ValueError("give at least one task")
    task_names = [t.name or type(t).__name__ for t in task_objs]
    if len(set(task_names)) != len(task_names):
        raise ValueError(f"tasks must be distinct, got {task_names}")
    common = dict(device=device, dtype=dtype, divergence_penalty=float(divergence_penalty), batched=batched)

    def task_ref(task: Task, spec: str | Task) -> str | Task:
        return spec if isinstance(spec, str) else task

    # stage 1 per task: tuning populations, and contenders (they need no tuning);
    # stage 2: the tuned baselines on the evaluation seeds
    stage1: dict[str, list[Job]] = {}
    kinds: dict[str, str] = {b: ("reference" if get_baseline(b).optimizer else "baseline") for b in baselines}
    trained_on: dict[str, list[str]] = {}
    specs = {}
    for task, spec, name_t in zip(task_objs, tasks, task_names):
        specs[name_t] = task_ref(task, spec)
        by_env: dict[EnvSpec, list[Slot]] = defaultdict(list)
        for name in baselines:
            env = EnvSpec(optimizer=get_baseline(name).optimizer)
            for trial in tuning_grid(name, task.config, trials):
                params = _params(trial)
                ref = PolicyRef("baseline", name=name, params=params)
                by_env[env].extend(Slot(name, params, s, "tune", ref) for s in tunes)
        for contender in _contenders_for(task, contenders, optimal):
            kinds[contender.name] = contender.kind
            if contender.trained_on is not None:
                trained_on[contender.name] = list(contender.trained_on)
            by_env[contender.env].extend(Slot(contender.name, (), s, "eval", _contender_ref(contender, task)) for s in evals)
        stage1[name_t] = [Job(specs[name_t], task_config, env, chunk, **common) for env, slots in by_env.items() for chunk in _chunks(slots, population)]

    tuned: dict[tuple[str, str], dict[str, Any]] = {}

    def stage2(name_t: str, episodes: list[Episode]) -> list[Job]:
        tuned.update(_tune(episodes, [name_t], baselines))
        by_env: dict[EnvSpec, list[Slot]] = defaultdict(list)
        for name in baselines:
            params = _params(tuned[(name_t, name)]["params"])
            ref = PolicyRef("baseline", name=name, params=params)
            by_env[EnvSpec(optimizer=get_baseline(name).optimizer)].extend(Slot(name, params, s, "eval", ref) for s in evals)
        return [Job(specs[name_t], task_config, env, chunk, **common) for env, slots in by_env.items() for chunk in _chunks(slots, population)]

    total = sum(len(j.slots) * _epochs(j) for jobs in stage1.values() for j in jobs)
    total += sum(len(evals) * len(baselines) * t.config.epochs for t in task_objs)
    store = Path(cache_dir) if cache_dir is not None else None
    with _Runner(workers, store, progress, total) as runner:
        episodes = runner.run(stage1, stage2)
    order = [b for b in baselines] + [c.name for c in contenders] + ([OPTIMAL] if OPTIMAL in kinds else [])
    settings = {
        "tasks": task_names,
        "baselines": baselines,
        "contenders": [c.name for c in contenders],
        "eval_seeds": evals,
        "tune_seeds": tunes,
        "trials": trials,
        "task_config": task_config,
        "device": device,
        "dtype": dtype,
        "divergence_penalty": divergence_penalty,
        "population": population,
        "trained_on": trained_on,
    }
    return Results(episodes, tuned, task_names, order, kinds, settings)


def _seed_list(seeds: int | Sequence[int], eval_seeds_fn: bool) -> list[int]:
    if isinstance(seeds, (int, np.integer)):
        if seeds < 0:
            raise ValueError(f"a number of seeds must be >= 0, got {seeds}")
        return eval_seeds(int(seeds)) if eval_seeds_fn else tune_seeds(int(seeds))
    values = [int(s) for s in seeds]
    if len(set(values)) != len(values):
        raise ValueError(f"seeds must be distinct, got {values}")
    return values


def _contenders_for(task: Task, contenders: Sequence[Contender], optimal: bool) -> list[Contender]:
    name = task.name or type(task).__name__
    chosen = [c for c in contenders if c.tasks is None or name in c.tasks]
    if optimal:
        best = optimal_contender(task)
        if best is not None:
            chosen.append(best)
    return chosen


def _contender_ref(contender: Contender, task: Task) -> PolicyRef:
    name = task.name or type(task).__name__
    if contender.lrs is not None:
        return PolicyRef("fixed", name=contender.name, lrs=tuple(float(v) for v in contender.lrs[name]))
    if contender.run_dir is not None:
        if contender.policy is not None:
            _RUN_POLICIES.setdefault(contender.run_dir, contender.policy)  # in-process runs reuse the loaded one
        return PolicyRef("run", name=contender.name, run_dir=contender.run_dir)
    if contender.policy is None:
        raise ValueError(f"contender {contender.name!r} has neither a policy, a run_dir nor fixed lrs")
    return PolicyRef("object", name=contender.name, obj=contender.policy)


def _tune(episodes: list[Episode], tasks: list[str], baselines: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """Best setting per (task, baseline): highest mean tuning score, first in grid order on ties."""
    trials: dict[tuple[str, str], dict[tuple, list[float]]] = defaultdict(dict)
    for e in episodes:
        if e.role == "tune":
            trials[(e.task, e.method)].setdefault(_params(e.params), []).append(e.score)
    tuned: dict[tuple[str, str], dict[str, Any]] = {}
    for task in tasks:
        for name in baselines:
            table = trials[(task, name)]
            scores = {p: float(np.mean(v)) for p, v in table.items()}
            best = max(scores, key=lambda p: scores[p])  # dicts keep grid order: first wins ties
            tuned[(task, name)] = {"params": dict(best), "score": scores[best], "trials": scores}
    return tuned


# -- statistics -------------------------------------------------------------------------------


@dataclass
class Results:
    """Episodes of a comparison and its statistics.

    Attributes:
        episodes: Every episode, tuning and evaluation.
        tuned: ``{(task, baseline): {"params", "score", "trials"}}``.
        tasks: Task names, in order.
        methods: Method names, in order (baselines, contenders, references).
        kinds: ``{method: "baseline" | "learned" | "reference"}``.
        settings: The protocol (seeds, trials, ...).
    """

    episodes: list[Episode]
    tuned: dict[tuple[str, str], dict[str, Any]]
    tasks: list[str]
    methods: list[str]
    kinds: dict[str, str]
    settings: dict[str, Any]

    def evaluation(self, task: str, method: str) -> list[Episode]:
        """The evaluation episodes of a method on a task, in seed order."""
        return sorted((e for e in self.episodes if e.role == "eval" and e.task == task and e.method == method), key=lambda e: e.seed)

    def methods_on(self, task: str) -> list[str]:
        present = {e.method for e in self.episodes if e.role == "eval" and e.task == task}
        return [m for m in self.methods if m in present]

    def best_baseline(self, task: str) -> str | None:
        """The baseline (kind ``"baseline"``) with the best tuning score on ``task``."""
        candidates = [m for m in self.methods if self.kinds.get(m) == "baseline" and (task, m) in self.tuned]
        if not candidates:
            return None
        return max(candidates, key=lambda m: self.tuned[(task, m)]["score"])

    def _held_out(self, task: str, method: str) -> bool | None:
        """For a learned policy whose training tasks are known: whether ``task`` was not one of them."""
        seen = self.settings.get("trained_on", {}).get(method)
        return None if seen is None else task not in seen

    def summary(self) -> list[dict[str, Any]]:
        """One row per (task, method) with the statistics described in the module docstring."""
        rows = []
        for task in self.tasks:
            methods = self.methods_on(task)
            best = self.best_baseline(task)
            best_by_seed = {e.seed: e.final_loss for e in self.evaluation(task, best)} if best else {}
            means = {m: float(np.mean([e.final_loss for e in self.evaluation(task, m)])) for m in methods}
            ranks = _ranks(means)
            for method in methods:
                eps = self.evaluation(task, method)
                loss = np.array([e.final_loss for e in eps])
                acc = np.array([e.final_accuracy for e in eps])
                paired = [(e.final_loss, best_by_seed[e.seed]) for e in eps if e.seed in best_by_seed]
                diff = np.array([a - b for a, b in paired])
                to_target = np.array([e.epochs_to_target for e in eps])
                tuned = self.tuned.get((task, method))
                rows.append(
                    {
                        "task": task,
                        "method": method,
                        "kind": self.kinds.get(method, "learned"),
                        "params": _format_params(tuned["params"]) if tuned else "",
                        "tuning_score": tuned["score"] if tuned else math.nan,
                        "best_baseline": best or "",
                        "seeds": len(eps),
                        "valid_loss_mean": float(loss.mean()),
                        "valid_loss_std": _std(loss),
                        "delta_mean": float(diff.mean()) if len(diff) else math.nan,
                        "delta_se": _std(diff) / math.sqrt(len(diff)) if len(diff) > 1 else math.nan,
                        "delta_pct": 100 * float(diff.mean()) / float(np.mean([b for _, b in paired])) if len(diff) else math.nan,
                        "win_rate": float(np.mean((diff < 0) + 0.5 * (diff == 0))) if len(diff) and method != best else math.nan,
                        "valid_accuracy_mean": _nanmean(acc),
                        "valid_accuracy_std": _std(acc[np.isfinite(acc)]) if np.isfinite(acc).any() else math.nan,
                        "test_loss_mean": _nanmean(np.array([e.test_loss for e in eps])),
                        "test_accuracy_mean": _nanmean(np.array([e.test_accuracy for e in eps])),
                        "target_epochs_median": float(np.median(to_target)) if not np.isnan(to_target).all() else math.nan,
                        "target_reached": float(np.mean(np.isfinite(to_target))) if not np.isnan(to_target).all() else math.nan,
                        "accepted": _nanmean(np.array([e.accepted for e in eps])),
                        "diverged": float(np.mean([e.diverged for e in eps])),
                        "rank": ranks[method],
                        "held_out": self._held_out(task, method),
                    }
                )
        return rows

    def aggregate(self) -> list[dict[str, Any]]:
        """One row per method across tasks: median and mean rank, performance-profile ratios, wins."""
        rows = self.summary()
        out = []
        for method in self.methods:
            mine = [r for r in rows if r["method"] == method]
            if not mine:
                continue
            ratios = {}
            for r in mine:
                best_mean = min(x["valid_loss_mean"] for x in rows if x["task"] == r["task"])
                ratios[r["task"]] = r["valid_loss_mean"] / best_mean
            wins = [r["win_rate"] for r in mine if not math.isnan(r["win_rate"])]
            out.append(
                {
                    "method": method,
                    "kind": self.kinds.get(method, "learned"),
                    "tasks": len(mine),
                    "median_rank": float(np.median([r["rank"] for r in mine])),
                    "mean_rank": float(np.mean([r["rank"] for r in mine])),
                    "mean_win_rate": float(np.mean(wins)) if wins else math.nan,
                    "ratios": ratios,
                }
            )
        return out

    def to_markdown(self) -> str:
        """Per-task tables and the aggregate, as Markdown."""
        rows = self.summary()
        s = self.settings
        lines = [
            "# Schedule comparison",
            "",
            f"Tasks: {', '.join(self.tasks)}. Evaluation seeds: {len(s['eval_seeds'])} "
            f"({s['eval_seeds'][0]}..{s['eval_seeds'][-1]}); tuning: {s['trials']} trials per baseline on "
            f"{len(s['tune_seeds'])} seeds ({', '.join(map(str, s['tune_seeds']))}). "
            + (f"Task overrides: {s['task_config']}. " if s["task_config"] else "")
            + "Final validation loss: mean ± std over the evaluation seeds; Δ: paired difference to the best tuned "
            "baseline (★) ± its standard error; win: share of seeds beating it; to target: median epochs to the "
            "task's target validation loss (reached share); accepted: test loss ≤ target.",
        ]
        for task in self.tasks:
            task_rows = sorted((r for r in rows if r["task"] == task), key=lambda r: (r["rank"], r["method"]))
            if not task_rows:
                continue
            lines += ["", f"## {task}", "", "| rank | method | tuned | final valid loss | Δ vs ★ | win | valid acc | to target | accepted | diverged |", "|---:|---|---|---|---|---:|---|---|---:|---:|"]
            for r in task_rows:
                star = " ★" if r["method"] == r["best_baseline"] else ""
                seen = {True: ", held-out task", False: ", trained on this task", None: ""}[r["held_out"]]
                kind = "" if r["kind"] == "baseline" else f" ({r['kind']}{seen})"
                lines.append(
                    f"| {_fmt_rank(r['rank'])} | {r['method']}{star}{kind} | {r['params']} | "
                    f"{_g(r['valid_loss_mean'])} ± {_g(r['valid_loss_std'], 2)} | {_delta(r)} | {_pct(r['win_rate'])} | "
                    f"{_acc_text(r)} | {_target(r)} | {_pct(r['accepted'])} | {_pct(r['diverged'])} |"
                )
        lines += ["", "## All tasks", "", "| method | tasks | median rank | mean rank | mean win rate vs ★ |", "|---|---:|---:|---:|---:|"]
        for a in sorted(self.aggregate(), key=lambda a: (a["median_rank"], a["mean_rank"])):
            kind = "" if a["kind"] == "baseline" else f" ({a['kind']})"
            lines.append(f"| {a['method']}{kind} | {a['tasks']} | {_fmt_rank(a['median_rank'])} | {a['mean_rank']:.2f} | {_pct(a['mean_win_rate'])} |")
        return "\n".join(lines) + "\n"

    def write_csv(self, path: str | os.PathLike[str]) -> None:
        """The summary rows as CSV."""
        _write_csv(path, self.summary())

    def tuning_rows(self) -> list[dict[str, Any]]:
        """Every tuning trial: task, baseline, parameters, mean score, and whether it was chosen."""
        rows = []
        for (task, method), t in self.tuned.items():
            for params, score in t["trials"].items():
                rows.append({"task": task, "method": method, "params": _format_params(dict(params)), "score": score, "chosen": dict(params) == t["params"]})
        return rows

    def episode_rows(self) -> list[dict[str, Any]]:
        """Every evaluation episode's end: one row per (task, method, seed)."""
        return [
            {
                "task": e.task,
                "method": e.method,
                "seed": e.seed,
                "run_seed": e.run_seed,
                "final_valid_loss": e.final_loss,
                "final_valid_accuracy": e.final_accuracy,
                "test_loss": e.test_loss,
                "test_accuracy": e.test_accuracy,
                "epochs_to_target": e.epochs_to_target,
                "diverged": e.diverged,
                "lrs": " ".join(f"{v:.4g}" for v in e.lrs),
            }
            for e in self.episodes
            if e.role == "eval"
        ]


def _write_csv(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    import csv

    if not rows:
        Path(path).write_text("")
        return
    columns = [c for c in rows[0] if c != "ratios"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items() if k in columns})


def _ranks(means: dict[str, float]) -> dict[str, float]:
    """Rank 1 = lowest mean loss; ties share their average rank."""
    values = sorted(means.values())
    return {m: float(np.mean([i + 1 for i, v in enumerate(values) if v == x])) for m, x in means.items()}


def _std(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if len(x) > 1 else math.nan


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else math.nan


def _format_params(params: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in params.items())


def _g(x: float, digits: int = 4) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _pct(x: float) -> str:
    return "—" if math.isnan(x) else f"{100 * x:.0f}%"


def _fmt_rank(x: float) -> str:
    return f"{x:g}"


def _delta(r: dict[str, Any]) -> str:
    if r["method"] == r["best_baseline"] or math.isnan(r["delta_mean"]):
        return "—"
    se = "" if math.isnan(r["delta_se"]) else f" ± {r['delta_se']:.2g}"
    return f"{r['delta_mean']:+.3g}{se} ({r['delta_pct']:+.1f}%)"


def _acc_text(r: dict[str, Any]) -> str:
    if math.isnan(r["valid_accuracy_mean"]):
        return "—"
    return f"{r['valid_accuracy_mean']:.3f} ± {_g(r['valid_accuracy_std'], 2)}"


def _target(r: dict[str, Any]) -> str:
    if math.isnan(r["target_reached"]):
        return "—"
    med = r["target_epochs_median"]
    return f"{'never' if math.isinf(med) else f'{med:g}'} ({100 * r['target_reached']:.0f}%)"


__all__ = [
    "Contender",
    "DEFAULT_EVAL_SEEDS",
    "DEFAULT_TRIALS",
    "DEFAULT_TUNE_SEEDS",
    "EVAL_SEED_BASE",
    "EnvSpec",
    "Episode",
    "Job",
    "Results",
    "TUNE_SEED_BASE",
    "compare",
    "default_cache_dir",
    "env_run_seed",
    "eval_seeds",
    "load_run",
    "optimal_contender",
    "run_job",
    "tune_seeds",
]
