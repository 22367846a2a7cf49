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


RAY_ENV = {"features": "relative", "action_mode": "multiplier", "relative_factor": 30.0, "base_shape": "cosine", "base_lr_spread": 10.0,
           "device": "cpu", "task_config": {"epochs": 3}}


def test_a_ray_vec_env_gives_the_numbers_of_the_same_envs_in_one_process(cluster):
    from lrenv import BatchedVecEnv, EnvConfig
    from lrenv.env.mixture import MixtureVecEnv
    from lrenv.env.ray_vec_env import RayVecEnv, split_populations

    quad = EnvConfig(**{**RAY_ENV, "task_config": {"epochs": 2}})
    specs = [("Digits-MLP-v0", 3, EnvConfig(**RAY_ENV).to_dict()), ("NoisyQuadratic-v0", 2, quad.to_dict())]
    remote = RayVecEnv(split_populations(specs, 2), address=cluster.address)
    local = MixtureVecEnv([BatchedVecEnv("Digits-MLP-v0", 3, config=EnvConfig(**RAY_ENV)), BatchedVecEnv("NoisyQuadratic-v0", 2, config=quad)])
    try:
        assert len({part.pid for part in remote.parts}) == 2 and remote.num_envs == 5
        remote.seed(11)
        local.seed(11)
        np.testing.assert_array_equal(remote.reset(), local.reset())
        rng = np.random.default_rng(0)
        for _ in range(7):  # past both budgets: shards restart their envs on their own
            actions = rng.uniform(-0.5, 0.5, size=(5, 1)).astype(np.float32)
            got, expected = remote.step(actions), local.step(actions)
            for a, b in zip(got[:3], expected[:3]):
                np.testing.assert_array_equal(a, b)
            assert [i["valid_loss"] for i in got[3]] == [i["valid_loss"] for i in expected[3]]
        assert remote.get_attr("num_envs", [0, 4]) == [3, 2]
    finally:
        remote.close()


def test_distributed_training_on_ray_actors_writes_a_run(cluster, tmp_path):
    from lrenv.agents import train

    run_dir = train.main(
        ["--algo", "ppo", "--task", "Digits-MLP-v0", "--timesteps", "24", "--n-envs", "4", "--ray-actors", "2", "--address", cluster.address,
         "--eval-episodes", "1", "--runs-dir", str(tmp_path), "--no-progress-bar",
         "--set", "env.task_config={epochs: 3}", "hyperparams.n_steps=6", "hyperparams.batch_size=12", "hyperparams.n_epochs=1"]
    )
    import json

    config = json.loads((run_dir / "config.json").read_text())
    assert config["vec_env"] == "ray" and config["ray_actors"] == 2
    episodes = [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]
    assert len(episodes) >= 8 and {e["task"] for e in episodes} == {"Digits-MLP-v0"}
    assert (run_dir / "policy.safetensors").is_file() and (run_dir / "eval.json").is_file()
    # resumed on the cluster from its last checkpoint: training goes on, each episode logged once
    train.main(["--resume", str(run_dir), "--timesteps", "48", "--ray-actors", "2", "--address", cluster.address, "--no-progress-bar"])
    resumed = [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]
    assert max(e["timesteps"] for e in resumed) > 24 and resumed[: len(episodes)] == episodes
    assert len({(e["timesteps"], e["run_seed"]) for e in resumed}) == len(resumed)


def test_more_ray_actors_than_envs_is_an_error():
    from lrenv.env.ray_vec_env import split_populations

    with pytest.raises(ValueError, match="3 Ray actors for 2 envs"):
        split_populations([("Digits-MLP-v0", 2, {})], 3)
    assert [len(s) for s in split_populations([("a", 1, {}), ("b", 1, {}), ("c", 1, {})], 2)] == [2, 1]


def test_a_killed_training_actor_is_replaced_and_the_other_shards_go_on(cluster):
    from lrenv import EnvConfig
    from lrenv.env.ray_vec_env import RayVecEnv

    env = EnvConfig(**{**RAY_ENV, "task_config": {"epochs": 4}}).to_dict()
    venv = RayVecEnv([[("Digits-MLP-v0", 2, env)], [("Digits-MLP-v0", 2, env)]], address=cluster.address)
    try:
        venv.seed(3)
        venv.reset()
        venv.step(np.zeros((4, 1)))
        os.kill(venv.parts[1].pid, signal.SIGKILL)
        with pytest.warns(UserWarning, match="Ray actor of shard 1 .* died"):
            obs, rewards, dones, infos = venv.step(np.zeros((4, 1)))
        assert dones.tolist() == [False, False, True, True] and [i.get("lost", False) for i in infos] == [False, False, True, True]
        assert [i["epoch"] for i in infos] == [2, 2, 0, 0] and venv.restarts == 1 and np.all(np.isfinite(obs))
        for _ in range(3):  # both shards keep stepping; shard 0 ends its episodes at the budget as usual
            obs, rewards, dones, infos = venv.step(np.zeros((4, 1)))
        assert [i["epoch"] for i in infos] == [1, 1, 3, 3] and dones.tolist() == [False] * 4
    finally:
        venv.close()


def test_a_sweep_runs_trials_rung_by_rung_and_writes_the_results_table(cluster, tmp_path):
    from lrenv.agents import sweep

    rows = sweep.main(
        ["--algo", "ppo", "--task", "Digits-MLP-v0", "--samples", "3", "--rungs", "2", "--rung-timesteps", "24", "--address", cluster.address,
         "--set", "env.task_config={epochs: 3}", "n_envs=4", "eval_episodes=0", "hyperparams.n_steps=6", "hyperparams.batch_size=12",
         "hyperparams.n_epochs=1", "--space", "hyperparams.learning_rate=loguniform:1e-4:1e-2", "seed=choice:0,1", "--out", str(tmp_path)]
    )
    assert len(rows) == 3
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0].startswith("hyperparams.learning_rate,seed,timesteps,validation_return") and len(lines) == 4
    for row in rows:
        run = Path(row["run_dir"])
        assert run.parent == tmp_path / "runs" and row["timesteps"] in (24, 48)
        config = __import__("json").loads((run / "config.json").read_text())
        assert config["hyperparams"]["learning_rate"] == row["hyperparams.learning_rate"] and config["seed"] == row["seed"]
        validation = (run / "validation.jsonl").read_text().splitlines()
        assert len(validation) == 1 + row["timesteps"] // 24  # the untrained policy, then one score per rung
    assert rows == sorted(rows, key=lambda r: -r["validation_return"])


def test_one_task_split_over_ray_actors_gives_the_numbers_of_one_batched_vec_env(cluster):
    from lrenv import BatchedVecEnv, EnvConfig
    from lrenv.env.ray_vec_env import RayVecEnv, split_populations

    config = EnvConfig(**RAY_ENV)
    remote = RayVecEnv(split_populations([("Digits-MLP-v0", 4, config.to_dict())], 2), address=cluster.address)
    local = BatchedVecEnv("Digits-MLP-v0", 4, config=config)
    try:
        assert [part.num_envs for part in remote.parts] == [2, 2]
        remote.seed(5)
        local.seed(5)
        np.testing.assert_allclose(remote.reset(), local.reset(), atol=1e-5)
        rng = np.random.default_rng(1)
        for _ in range(5):  # past the 3-epoch budget
            actions = rng.uniform(-0.5, 0.5, size=(4, 1)).astype(np.float32)
            got, expected = remote.step(actions), local.step(actions)
            np.testing.assert_allclose(got[0], expected[0], atol=1e-5)
            np.testing.assert_allclose(got[1], expected[1], atol=1e-5)
            np.testing.assert_array_equal(got[2], expected[2])
    finally:
        remote.close()
