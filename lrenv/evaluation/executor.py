"""Where populations run: in this process, in local worker processes or on a Ray cluster.

:class:`Executor` takes each task's first-stage jobs (tuning, and contenders that need no
tuning) and, as soon as a task's first stage is done, the jobs its follow-up returns (the
tuned baselines on the evaluation seeds), while other tasks go on. It checks the cache
before it runs a job, stores what finishes, and keeps a progress bar of inner epochs.

Jobs run through a :class:`Pool`: :class:`ProcessPool` (spawned local processes with one
torch thread each: parallelism comes from processes and batching) or
:class:`lrenv.evaluation.ray_pool.RayPool`; without a pool, in this process. A job whose
worker is lost (a killed process, a dead node) is run again elsewhere, with a warning.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue as queue_module
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

import torch

from lrenv.evaluation.cache import EpisodeCache, job_key
from lrenv.evaluation.protocol import Job
from lrenv.evaluation.runner import Episode, run_job

#: How often a job whose worker was lost is run again before the comparison gives up.
MAX_RERUNS = 3


class LostWorker(Exception):
    """The worker running a job died (killed, out of memory, its node gone): run the job again."""


class Pool(Protocol):
    """Runs jobs somewhere else; results come back as :meth:`lrenv.evaluation.runner.Episode.to_dict` lists."""

    #: Jobs worth keeping in flight at once.
    capacity: int
    #: Whether :meth:`progress` counts epochs as they are trained (else a job counts when it ends).
    reports_progress: bool

    def submit(self, job: Job) -> Any:
        """Start ``job``; returns a handle."""

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        """The handles that finished, waiting at most ``timeout`` seconds for the first."""

    def result(self, handle: Any) -> list[dict[str, Any]]:
        """A finished job's episodes; raises :class:`LostWorker` if its worker died."""

    def progress(self) -> int:
        """Inner epochs trained since the last call (0 where the pool does not report them)."""

    def close(self) -> None:
        """Stop the workers."""


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


class ProcessPool:
    """``workers`` spawned local processes (a :class:`~concurrent.futures.ProcessPoolExecutor`)."""

    reports_progress = True

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.capacity = 2 * workers  # a few jobs in flight per worker keep them busy without fixing the order early
        self._ctx = multiprocessing.get_context("spawn")
        self._queue = self._ctx.Queue()
        self._executor = self._new_executor()
        self._from: dict[Future, ProcessPoolExecutor] = {}

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=self._ctx, initializer=_worker_init, initargs=(self._queue,))

    def submit(self, job: Job) -> Future:
        future = self._executor.submit(_worker_run, job)
        self._from[future] = self._executor
        return future

    def wait(self, handles: list[Future], timeout: float) -> list[Future]:
        finished, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(finished)

    def result(self, handle: Future) -> list[dict[str, Any]]:
        executor = self._from.pop(handle, None)
        try:
            return handle.result()
        except BrokenProcessPool as exc:  # a worker died: every job in flight is lost with it
            if executor is self._executor:  # the first of them replaces the broken pool
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = self._new_executor()
            raise LostWorker(str(exc) or "a worker process ended abruptly") from exc

    def progress(self) -> int:
        done = 0
        with contextlib.suppress(queue_module.Empty):
            while True:
                done += self._queue.get_nowait()
        return done

    def close(self) -> None:
        with draining(self._queue):  # reports nobody read would keep the workers from exiting
            self._executor.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def draining(progress: Any) -> Iterator[None]:
    """Read and drop what arrives on a multiprocessing queue while the block runs.

    A process that put items on a queue flushes them into its pipe when it exits. A pipe
    that nobody reads holds 64 KiB, so a pool whose progress was never read (a caller that
    only submits and collects results) would wait forever for its workers to exit.
    """
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            with contextlib.suppress(queue_module.Empty):
                progress.get(timeout=0.05)

    reader = threading.Thread(target=read, name="lrenv-progress-drain", daemon=True)
    reader.start()
    try:
        yield
    finally:
        stop.set()
        reader.join()


class Executor:
    """Runs jobs through a pool (``None``: in this process), with a progress bar and a cache.

    Args:
        pool: Where jobs run; ``None`` runs them here, one after another.
        cache: Finished populations (``None``: no cache).
        progress: Show a progress bar of inner epochs.
        total_epochs: The bar's total.
    """

    def __init__(self, pool: Pool | None, cache: EpisodeCache | None, progress: bool, total_epochs: int) -> None:
        self.pool = pool
        self.cache = cache
        self.bar = _progress_bar(total_epochs, progress)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.close()
        self.bar.close()

    def run(self, stages: dict[str, list[Job]], follow_up: Callable[[str, list[Episode]], list[Job]]) -> list[Episode]:
        """Run each task's first-stage jobs, then the jobs ``follow_up(task, its episodes)`` returns.

        A task's second stage starts as soon as its first is done, while other tasks go on.
        Returns every episode, in task order and, within a task, in job order.
        """
        done: dict[str, list[list[Episode] | None]] = {}
        second: set[str] = set()
        pending: dict[Any, tuple[str, int, Job, str | None, int]] = {}
        waiting: list[tuple[int, int, str, int, Job, str | None]] = []  # (stage, order, task, index, job, key)
        reruns: dict[tuple[str, int], int] = {}

        def submit(task: str, jobs: list[Job], stage: int) -> None:
            base = len(done.setdefault(task, []))
            done[task].extend([None] * len(jobs))
            for i, job in enumerate(jobs, start=base):
                key = job_key(job) if self.cache is not None else None
                cached = self.cache.load(key) if self.cache is not None else None
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
            # second stages first (a task's results complete early), then first stages in task order
            assert self.pool is not None
            waiting.sort(key=lambda w: (w[0], w[1]))
            while waiting and len(pending) < self.pool.capacity:
                stage, _, task, i, job, key = waiting.pop(0)
                pending[self.pool.submit(job)] = (task, i, job, key, stage)

        for task, jobs in stages.items():
            submit(task, jobs, stage=1)
        while waiting or pending:
            feed()
            assert self.pool is not None
            finished = self.pool.wait(list(pending), timeout=0.25)
            self._count_progress()
            for handle in finished:
                task, i, job, key, stage = pending.pop(handle)
                try:
                    episodes = [Episode(**e) for e in self.pool.result(handle)]
                except LostWorker as exc:
                    reruns[(task, i)] = reruns.get((task, i), 0) + 1
                    if reruns[(task, i)] > MAX_RERUNS:
                        raise RuntimeError(f"a population of {task} lost its worker {MAX_RERUNS + 1} times; last: {exc}") from exc
                    warnings.warn(f"lrenv: a worker was lost ({exc}); running its population of {task} again", RuntimeWarning, stacklevel=2)
                    waiting.append((stage, -1, task, i, job, key))  # first in line
                    continue
                if not self.pool.reports_progress:
                    self.bar.update(len(job.slots) * _epochs(job))
                done[task][i] = episodes
                self._store(key, episodes)
                advance(task)
        self._count_progress()
        return [e for task in stages for r in done[task] for e in r or []]

    def _count_progress(self) -> None:
        if self.pool is not None:
            self.bar.update(self.pool.progress())

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
