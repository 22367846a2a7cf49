"""The comparison on a real two-node Ray cluster on this machine: same results, lost workers re-run, clear errors."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from lrenv.evaluation import Contender, compare  # noqa: E402

TASKS = ["NoisyQuadratic-v0", "Digits-MLP-v0"]
PROTOCOL = dict(baselines=["constant", "cosine", "schedule_free"], eval_seeds=3, tune_seeds=2, trials=2, task_config={"epochs": 3})


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node, one CPU each, on 127.0.0.1; the dashboard off."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    # the stand-in policy below lives in this test module, which the workers cannot import
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield cluster
    ray.shutdown()
    cluster.shutdown()


class KillOnce:
    """A policy whose first use kills its worker process (the marker file makes it once only)."""

    name = "kill-once"

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        if not Path(self.marker).exists():
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return np.full((len(obs), 1), 0.2, dtype=np.float32)


def test_ray_gives_the_local_results_on_a_two_node_cluster(cluster):
    local = compare(TASKS, **PROTOCOL)
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    distributed = compare(TASKS, backend="ray", address=cluster.address, **PROTOCOL)
    assert len(nodes) == 2
    assert _same(distributed.summary(), local.summary())
    assert [e.valid_loss for e in distributed.episodes] == [e.valid_loss for e in local.episodes]


def _same(a: list[dict], b: list[dict]) -> bool:
    return all(x.keys() == y.keys() and all(x[k] == y[k] or (x[k] != x[k] and y[k] != y[k]) for k in x) for x, y in zip(a, b))


def test_a_killed_worker_has_its_population_run_again_with_a_warning(cluster, tmp_path):
    marker = tmp_path / "killed"
    marker.touch()
    contender = [Contender("kill-once", policy=KillOnce(str(marker)), kind="reference")]
    local = compare(["Digits-MLP-v0"], contenders=contender, **PROTOCOL)
    marker.unlink()
    with pytest.warns(RuntimeWarning, match="a worker was lost .*running its population of Digits-MLP-v0 again"):
        distributed = compare(["Digits-MLP-v0"], contenders=contender, backend="ray", address=cluster.address, **PROTOCOL)
    assert marker.exists()  # the worker really was killed once
    assert _same(distributed.summary(), local.summary())  # nothing lost, nothing doubled
    assert len(distributed.episodes) == len(local.episodes)


def test_resources_no_node_has_are_an_error_at_once(cluster):
    start = time.monotonic()
    with pytest.raises(ValueError, match="no node of the Ray cluster can run a population with num_cpus=1, num_gpus=0.5"):
        compare(["NoisyQuadratic-v0"], backend="ray", address=cluster.address, gpus_per_population=0.5, **PROTOCOL)
    with pytest.raises(ValueError, match="num_cpus=4"):
        compare(["NoisyQuadratic-v0"], backend="ray", address=cluster.address, cpus_per_population=4, **PROTOCOL)
    assert time.monotonic() - start < 30
    assert ray.is_initialized()  # a cluster the comparison joined stays up


def test_the_cli_writes_the_local_summary_csv_from_ray(cluster, tmp_path):
    from lrenv.agents import evaluate

    common = ["--quick", "--tasks", "NoisyQuadratic-v0", "Digits-MLP-v0", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    evaluate.main([*common, "--workers", "2", "--out", str(tmp_path / "local"), "--no-cache"])
    evaluate.main([*common, "--backend", "ray", "--address", cluster.address, "--out", str(tmp_path / "ray")])
    assert (tmp_path / "ray" / "summary.csv").read_bytes() == (tmp_path / "local" / "summary.csv").read_bytes()
    # the cache works with Ray too: a second run reads it and writes the same table
    evaluate.main([*common, "--backend", "ray", "--address", cluster.address, "--out", str(tmp_path / "again")])
    assert (tmp_path / "again" / "summary.csv").read_bytes() == (tmp_path / "local" / "summary.csv").read_bytes()
    assert list((tmp_path / "cache").rglob("*.json"))


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="unknown backend 'dask'; choose 'local' or 'ray'"):
        compare(["NoisyQuadratic-v0"], backend="dask", **PROTOCOL)
