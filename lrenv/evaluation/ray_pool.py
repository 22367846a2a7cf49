"""Populations as Ray tasks: a comparison on a Ray cluster (``pip install "lrenv[ray]"``).

Each population (:class:`~lrenv.evaluation.protocol.Job`) is one Ray task that declares
``num_cpus`` and, on a GPU, a fraction of one (``num_gpus=0.25``: four populations share a
device). A task whose worker dies (a killed process, a lost node) is reported as
:class:`~lrenv.evaluation.executor.LostWorker`, and the executor runs it again elsewhere with
a warning; Ray's own silent retries are off so that this is visible. A request the cluster
cannot place (more CPUs or GPUs per population than any node has) is an error before
anything runs, not a wait for resources that never come.

Ray is imported when a pool is made, never by ``import lrenv``.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from lrenv.evaluation.executor import LostWorker
from lrenv.evaluation.protocol import Job


def _run_population(job: Job) -> list[dict[str, Any]]:
    import torch

    from lrenv.evaluation.runner import run_job

    torch.set_num_threads(1)  # Ray sets OMP_NUM_THREADS from num_cpus; torch's own pool needs telling
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [e.to_dict() for e in run_job(job)]


class RayPool:
    """Runs populations as Ray tasks on the cluster at ``address`` (``None``: a new local one).

    Args:
        address: A running cluster (``"auto"``, ``"127.0.0.1:6379"``, ``ray://...``); ``None``
            connects to the one this process already joined, or starts a local one with
            ``workers`` CPUs.
        workers: CPUs of a local cluster started here (``None``: every core).
        num_cpus: CPUs each population declares.
        num_gpus: GPUs each population declares, a fraction to share a device (0 on a CPU).

    Raises:
        ImportError: Ray is not installed.
        ValueError: No node of the cluster has ``num_cpus`` CPUs and ``num_gpus`` GPUs.
    """

    reports_progress = False

    def __init__(self, address: str | None = None, *, workers: int | None = None, num_cpus: float = 1.0, num_gpus: float = 0.0) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ImportError('the Ray backend needs Ray: pip install "lrenv[ray]"') from exc
        if not (num_cpus > 0 and num_gpus >= 0):
            raise ValueError(f"a population needs num_cpus > 0 and num_gpus >= 0, got {num_cpus} and {num_gpus}")
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            if address is None:
                ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
            self._started = True
        self._check_placeable(num_cpus, num_gpus)
        cpus = sum(node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"])
        self.capacity = max(1, int(2 * cpus // num_cpus))
        self._task = ray.remote(_run_population).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)

    def _check_placeable(self, num_cpus: float, num_gpus: float) -> None:
        nodes = [node["Resources"] for node in self._ray.nodes() if node["Alive"]]
        if not any(r.get("CPU", 0.0) >= num_cpus and r.get("GPU", 0.0) >= num_gpus for r in nodes):
            largest = max(((r.get("CPU", 0.0), r.get("GPU", 0.0)) for r in nodes), default=(0.0, 0.0))
            self.close()
            raise ValueError(
                f"no node of the Ray cluster can run a population with num_cpus={num_cpus:g}, num_gpus={num_gpus:g} "
                f"(the largest node has {largest[0]:g} CPUs and {largest[1]:g} GPUs); ask for less or add a node"
            )

    def submit(self, job: Job) -> Any:
        return self._task.remote(job)

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        finished, _ = self._ray.wait(handles, num_returns=1, timeout=timeout)
        if finished:  # take every one that is ready, not just the first
            finished, _ = self._ray.wait(handles, num_returns=len(handles), timeout=0)
        return finished

    def result(self, handle: Any) -> list[dict[str, Any]]:
        exceptions = self._ray.exceptions
        try:
            return self._ray.get(handle)
        except (exceptions.WorkerCrashedError, exceptions.NodeDiedError, exceptions.ObjectLostError, exceptions.OwnerDiedError) as exc:
            raise LostWorker(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        except exceptions.RayTaskError as exc:  # an error in lrenv's code: raise it as itself
            raise exc.as_instanceof_cause() from None

    def progress(self) -> int:
        return 0

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            self._started = False
