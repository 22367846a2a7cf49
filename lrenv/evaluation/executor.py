"""Where populations run: in this process or in worker processes, with a progress bar and the cache.

:class:`Executor` takes each task's first-stage jobs (tuning, and contenders that need no
tuning) and, as soon as a task's first stage is done, the jobs its follow-up returns (the
tuned baselines on the evaluation seeds), while other tasks go on. Workers are spawned
processes with one torch thread each: parallelism comes from processes and batching.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue as queue_module
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

import torch

from lrenv.evaluation.cache import EpisodeCache, job_key
from lrenv.evaluation.protocol import Job
from lrenv.evaluation.runner import Episode, run_job

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


class Executor:
    """Runs jobs in this process (``workers=0``) or in worker processes, with a progress bar and a cache.

    Args:
        workers: Worker processes (0: this process).
        cache: Finished populations (``None``: no cache).
        progress: Show a progress bar of inner epochs.
        total_epochs: The bar's total.
    """

    def __init__(self, workers: int, cache: EpisodeCache | None, progress: bool, total_epochs: int) -> None:
        self.workers = workers
        self.cache = cache
        self.bar = _progress_bar(total_epochs, progress)
        self.pool: ProcessPoolExecutor | None = None
        self.queue: Any = None

    def __enter__(self) -> Executor:
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
                key = job_key(job) if self.cache is not None else None
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

    def _load(self, key: str | None) -> list[Episode] | None:
        return self.cache.load(key) if self.cache is not None else None

    def _store(self, key: str | None, episodes: list[Episode] | None) -> None:
        if self.cache is not None:
            self.cache.store(key, episodes)


def _epochs(job: Job) -> int:
    return job.make_task().config.epochs


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
