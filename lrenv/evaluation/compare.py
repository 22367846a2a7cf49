"""The comparison: tune every baseline with the same budget, then evaluate all methods on paired seeds.

:func:`compare` runs, for each task:

1. **Tuning** (baselines only, :mod:`lrenv.evaluation.tuning`). Each baseline of
   :data:`lrenv.baselines.BASELINES` gets ``trials`` settings, each run on every tuning
   seed; the best-scoring setting is the tuned baseline.
2. **Evaluation.** Every tuned baseline, every contender (learned policies, which get no
   per-task tuning, and reference schedules such as the noisy quadratic's analytically
   optimal one) runs on the evaluation seeds, which are disjoint from the tuning seeds.

Slots are grouped by what a population must share (env settings, optimizer) and cut into
populations of at most ``population`` runs (:class:`~lrenv.evaluation.protocol.Job`), which
the :class:`~lrenv.evaluation.executor.Executor` runs and caches.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from lrenv.baselines import BASELINES, baseline_optimizer, get_baseline
from lrenv.engine import resolve_device
from lrenv.env.config import EnvConfig
from lrenv.evaluation.cache import EpisodeCache
from lrenv.evaluation.executor import Executor, Pool, ProcessPool
from lrenv.evaluation.protocol import (
    DEFAULT_EVAL_SEEDS,
    DEFAULT_POPULATION,
    DEFAULT_TRIALS,
    DEFAULT_TUNE_SEEDS,
    OPTIMAL,
    Contender,
    Job,
    PolicyRef,
    Slot,
    eval_seeds,
    optimal_contender,
    tune_seeds,
)
from lrenv.evaluation.results import Results
from lrenv.evaluation.runner import Episode, remember_policy
from lrenv.evaluation.tuning import as_params, select_tuned, tuning_grid
from lrenv.registry import make_task
from lrenv.task import Task

#: The env settings a policy acts through: a contender runs with its own, the comparison's others.
POLICY_SETTINGS = ("features", "action_mode", "relative_factor", "base_shape")


def _chunks(slots: list[Slot], size: int) -> Iterable[list[Slot]]:
    for start in range(0, len(slots), size):
        yield slots[start : start + size]


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
    backend: str = "local",
    address: str | None = None,
    cpus_per_population: float = 1.0,
    gpus_per_population: float | None = None,
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
            :func:`lrenv.evaluation.tuning.tuning_grid`).
        task_config: :class:`lrenv.TaskConfig` overrides for every task (e.g. ``{"epochs": 5}``).
        device: ``"cpu"``, ``"cuda"``, ``"auto"``.
        dtype: ``"float32"`` or ``"float64"``.
        divergence_penalty: Return of a diverged episode is ``-divergence_penalty`` (as in LREnv).
        workers: Worker processes (0: run in this process); with ``backend="ray"`` and no
            ``address``, the CPUs of the local Ray cluster started for the comparison.
        population: Most runs trained as one population.
        batched: Passed to the engine (``None``: stack runs where the model allows it).
        cache_dir: Cache of finished populations (``None``: no cache); see :func:`default_cache_dir`.
        progress: Show a progress bar (tqdm) of inner epochs.
        backend: ``"local"`` (this process or local worker processes) or ``"ray"``
            (:class:`lrenv.evaluation.ray_pool.RayPool`: one Ray task per population). The
            results are the same either way.
        address: The Ray cluster to use (``None``: the one already joined, else a local one).
        cpus_per_population: CPUs each Ray task declares.
        gpus_per_population: GPUs each Ray task declares (default: 0.25 on CUDA, so four
            populations share a device, else 0).

    Returns:
        The episodes and tuning results, with statistics methods.
    """
    baselines = list(BASELINES) if baselines is None else list(baselines)
    for name in baselines:
        get_baseline(name)
    env = EnvConfig(dtype=dtype, device=device, divergence_penalty=divergence_penalty, task_config=task_config or None)
    resolve_device(env.device)  # a bad device is an error now, not in a worker
    evals, tunes = _checked_seeds(eval_seeds, tune_seeds, need_tuning=bool(baselines))
    _check_counts(population=population, workers=workers)
    _check_names([c.name for c in contenders], optimal)
    task_objs = [make_task(t, **env.task_overrides) for t in tasks]
    if not task_objs:
        raise ValueError("give at least one task")
    task_names = [t.name or type(t).__name__ for t in task_objs]
    if len(set(task_names)) != len(task_names):
        raise ValueError(f"tasks must be distinct, got {task_names}")

    # a task object travels to the workers as is; a registered one by name
    specs = {name: (spec if isinstance(spec, str) else task) for task, spec, name in zip(task_objs, tasks, task_names)}
    configs = {name: task.config for task, name in zip(task_objs, task_names)}

    def jobs(name_t: str, groups: dict[tuple[EnvConfig, str | None], list[Slot]]) -> list[Job]:
        return [
            Job(specs[name_t], job_env, chunk, optimizer=optimizer, batched=batched)
            for (job_env, optimizer), slots in groups.items()
            for chunk in _chunks(slots, population)
        ]

    # stage 1 per task: tuning populations, and contenders (they need no tuning);
    # stage 2: the tuned baselines on the evaluation seeds
    stage1: dict[str, list[Job]] = {}
    kinds: dict[str, str] = {b: ("reference" if get_baseline(b).optimizer else "baseline") for b in baselines}
    trained_on: dict[str, list[str]] = {}
    for task, name_t in zip(task_objs, task_names):
        groups: dict[tuple[EnvConfig, str | None], list[Slot]] = defaultdict(list)
        for name in baselines:
            optimizer = baseline_optimizer(name, task.config)
            for trial in tuning_grid(name, task.config, trials):
                params = as_params(trial)
                ref = PolicyRef("baseline", name=name, params=params)
                groups[(env, optimizer)].extend(Slot(name, params, s, "tune", ref) for s in tunes)
        for contender in _contenders_for(task, contenders, optimal):
            kinds[contender.name] = contender.kind
            if contender.trained_on is not None:
                trained_on[contender.name] = list(contender.trained_on)
            own = env.replace(**{field: getattr(contender.env, field) for field in POLICY_SETTINGS})
            groups[(own, None)].extend(Slot(contender.name, (), s, "eval", _contender_ref(contender, task)) for s in evals)
        stage1[name_t] = jobs(name_t, groups)

    tuned: dict[tuple[str, str], dict[str, Any]] = {}

    def stage2(name_t: str, episodes: list[Episode]) -> list[Job]:
        tuned.update(select_tuned(episodes, [name_t], baselines))
        groups: dict[tuple[EnvConfig, str | None], list[Slot]] = defaultdict(list)
        for name in baselines:
            params = as_params(tuned[(name_t, name)]["params"])
            ref = PolicyRef("baseline", name=name, params=params)
            groups[(env, baseline_optimizer(name, configs[name_t]))].extend(Slot(name, params, s, "eval", ref) for s in evals)
        return jobs(name_t, groups)

    total = sum((sum(len(job.slots) for job in stage1[name]) + len(evals) * len(baselines)) * configs[name].epochs for name in task_names)
    cache = EpisodeCache(cache_dir) if cache_dir is not None else None
    pool = _make_pool(backend, workers, address, cpus_per_population, gpus_per_population, env.device)
    with Executor(pool, cache, progress, total) as executor:
        episodes = executor.run(stage1, stage2)
    order = [*baselines] + [c.name for c in contenders] + ([OPTIMAL] if OPTIMAL in kinds else [])
    settings = {
        "tasks": task_names,
        "baselines": baselines,
        "contenders": [c.name for c in contenders],
        "eval_seeds": evals,
        "tune_seeds": tunes,
        "trials": trials,
        "task_config": env.task_overrides,
        "device": device,
        "dtype": dtype,
        "divergence_penalty": divergence_penalty,
        "population": population,
        "backend": backend,
        "trained_on": trained_on,
    }
    return Results(episodes, tuned, task_names, order, kinds, settings)


def _make_pool(backend: str, workers: int, address: str | None, cpus: float, gpus: float | None, device: str) -> Pool | None:
    if backend == "local":
        return ProcessPool(workers) if workers > 0 else None
    if backend == "ray":
        from lrenv.evaluation.ray_pool import RayPool

        if gpus is None:
            gpus = 0.25 if resolve_device(device).type == "cuda" else 0.0
        return RayPool(address, workers=workers or None, num_cpus=cpus, num_gpus=gpus)
    raise ValueError(f"unknown backend {backend!r}; choose 'local' or 'ray'")


def _checked_seeds(evals: int | Sequence[int], tunes: int | Sequence[int], need_tuning: bool) -> tuple[list[int], list[int]]:
    """Evaluation and tuning seeds as lists: present, distinct, disjoint."""
    eval_list, tune_list = _seed_list(evals, eval_seeds_fn=True), _seed_list(tunes, eval_seeds_fn=False)
    if need_tuning and not tune_list:
        raise ValueError("tuning needs at least one tuning seed")
    if not eval_list:
        raise ValueError("evaluation needs at least one evaluation seed")
    overlap = sorted(set(eval_list) & set(tune_list))
    if overlap:
        raise ValueError(f"tuning and evaluation seeds must be disjoint; both contain {overlap[:5]}")
    return eval_list, tune_list


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        low = 1 if name == "population" else 0
        if not isinstance(value, int) or value < low:
            kind = "a positive integer" if low else "an integer >= 0"
            raise ValueError(f"{name} must be {kind}, got {value!r}")


def _check_names(names: list[str], optimal: bool) -> None:
    clash = sorted((set(names) & set(BASELINES)) | {n for n in names if names.count(n) > 1} | ({OPTIMAL} & set(names) if optimal else set()))
    if clash:
        raise ValueError(f"contender names must be unique and differ from the baselines' and {OPTIMAL!r}: {', '.join(clash)}")


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
            remember_policy(contender.run_dir, contender.policy)  # in-process runs reuse the loaded one
        return PolicyRef("run", name=contender.name, run_dir=contender.run_dir)
    if contender.policy is None:
        raise ValueError(f"contender {contender.name!r} has neither a policy, a run_dir nor fixed lrs")
    return PolicyRef("object", name=contender.name, obj=contender.policy)
