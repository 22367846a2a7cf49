"""RayVecEnv: a training VecEnv whose envs are shards of batched populations on Ray actors.

When one machine is not enough for the inner runs of meta-training, each of K Ray actors
holds a shard: one :class:`~lrenv.env.vec_env.BatchedVecEnv` (or a
:class:`~lrenv.env.mixture.MixtureVecEnv` of several), on its own share of a node (``num_cpus``,
and ``num_gpus`` as a fraction of a device). A step sends every shard its actions and waits
for all of them with one ``ray.get``: a step is a whole epoch of inner training, so Ray's
~1 ms per call does not show. Observations, rewards, episode ends and infos are those of the
same shards side by side in one process (:class:`MixtureVecEnv`, env k seeded ``seed + k``).
An actor that dies (a killed process, a lost node) is replaced with a warning: its shard's
episodes in flight end (``info["lost"]``) and new ones start; the run goes on.

Ray is imported when a RayVecEnv is made (``pip install "lrenv[ray]"``), never by ``import lrenv``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from lrenv.env.mixture import MixtureVecEnv

#: One population of a shard: (task name, number of envs, EnvConfig.to_dict() of its settings).
PopulationSpec = tuple[str, int, dict[str, Any]]


class _Shard:
    """The actor's body: the shard's VecEnv, built on the actor from plain specs."""

    def __init__(self, populations: Sequence[PopulationSpec]) -> None:
        import torch

        from lrenv.env.config import EnvConfig
        from lrenv.env.vec_env import BatchedVecEnv

        torch.set_num_threads(1)  # Ray sets OMP_NUM_THREADS from num_cpus; torch's own pool needs telling
        parts = [BatchedVecEnv(task, n, config=EnvConfig.from_dict(env)) for task, n, env in populations]
        self.venv = parts[0] if len(parts) == 1 else MixtureVecEnv(parts)

    def describe(self) -> tuple[Any, Any, int, int]:
        return self.venv.observation_space, self.venv.action_space, self.venv.num_envs, os.getpid()

    def reset(self, seeds: list[int | None], options: list[dict[str, Any]]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        self.venv._seeds = list(seeds)
        self.venv._options = list(options)
        obs = self.venv.reset()
        return obs, list(self.venv.reset_infos)

    def step(self, actions: np.ndarray) -> VecEnvStepReturn:
        return self.venv.step(actions)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.venv, method)(*args, **kwargs)


class _RemoteShard(VecEnv):
    """A proxy VecEnv for one actor (the parts of a RayVecEnv)."""

    def __init__(self, actor: Any, description: tuple[Any, Any, int, int]) -> None:
        import ray

        self._ray = ray
        self.actor = actor
        observation_space, action_space, num_envs, self.pid = description
        self.future: Any = None
        self.render_mode = None
        super().__init__(num_envs, observation_space, action_space)

    def reset(self) -> VecEnvObs:
        obs, self.reset_infos = self._ray.get(self.actor.reset.remote(self._seeds, self._options))
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self.future = self.actor.step.remote(np.asarray(actions))

    def step_wait(self) -> VecEnvStepReturn:
        return self._ray.get(self.future)

    def close(self) -> None:
        self._ray.kill(self.actor)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return self._ray.get(self.actor.call.remote("get_attr", attr_name, indices))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self._ray.get(self.actor.call.remote("set_attr", attr_name, value, indices))

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any) -> list[Any]:
        return self._ray.get(self.actor.call.remote("env_method", method_name, *method_args, indices=indices, **method_kwargs))

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        return self._ray.get(self.actor.call.remote("env_is_wrapped", wrapper_class, indices))

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs


class RayVecEnv(MixtureVecEnv):
    """The envs of K shards, each a VecEnv on its own Ray actor, as one SB3 VecEnv.

    Args:
        shards: For each actor, the populations it holds: ``(task name, n_envs, env settings
            as EnvConfig.to_dict())``; the envs are numbered shard by shard, in order.
        address: A running cluster (``"auto"``, ``"127.0.0.1:6379"``); ``None`` joins the one
            this process is connected to, or starts a local one.
        num_cpus: CPUs each actor declares.
        num_gpus: GPUs each actor declares; a fraction shares a device (e.g. 0.25: four actors).
        timeout: Seconds to wait for the actors to start.

    Raises:
        ImportError: Ray is not installed.
        ValueError: ``shards`` is empty, or the actors could not be placed within ``timeout``
            (no node has the CPUs and GPUs asked for).
    """

    def __init__(
        self,
        shards: Sequence[Sequence[PopulationSpec]],
        *,
        address: str | None = None,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        timeout: float = 120.0,
    ) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ImportError('RayVecEnv needs Ray: pip install "lrenv[ray]"') from exc
        if not shards or not all(shards):
            raise ValueError(f"RayVecEnv needs one or more shards, each with one or more populations, got {shards!r}")
        self._ray = ray
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            if address is None:
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        self._actor_cls = ray.remote(_Shard).options(num_cpus=num_cpus, num_gpus=num_gpus)
        self._shards = [[tuple(p) for p in shard] for shard in shards]
        self.restarts = 0
        actors = [self._actor_cls.remote(shard) for shard in self._shards]
        try:
            descriptions = ray.get([a.describe.remote() for a in actors], timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            for actor in actors:
                ray.kill(actor)
            raise ValueError(
                f"{len(actors)} Ray actors with num_cpus={num_cpus:g}, num_gpus={num_gpus:g} each could not start within {timeout:g} s: "
                "the cluster lacks the resources; ask for fewer actors or less per actor, or add nodes"
            ) from None
        super().__init__([_RemoteShard(actor, d) for actor, d in zip(actors, descriptions)])

    def _wait_all(self) -> list[VecEnvStepReturn]:
        try:
            return self._ray.get([part.future for part in self.parts])  # one wait for every shard
        except self._ray.exceptions.RayActorError:
            return [self._result_or_replace(i) for i in range(len(self.parts))]

    def _result_or_replace(self, i: int) -> VecEnvStepReturn:
        """Shard i's step, or, when its actor died, a new actor whose envs start new episodes.

        The lost shard's episodes end (``done``, ``info["lost"]``; no terminal observation, so
        nothing is bootstrapped from it) and its envs continue with fresh episodes: the other
        shards, the agent and everything logged so far carry on.
        """
        part = self.parts[i]
        try:
            return self._ray.get(part.future)
        except self._ray.exceptions.RayActorError as exc:
            cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            lost = f"its {part.num_envs} episodes are lost and restart on a new actor"
            warnings.warn(f"Ray actor of shard {i} (pid {part.pid}) died ({cause}); {lost}", stacklevel=2)
        actor = self._actor_cls.remote(self._shards[i])
        new = _RemoteShard(actor, self._ray.get(actor.describe.remote()))
        self.restarts += 1
        first = 10**9 + self.restarts * self.num_envs  # seeds no reset of this env hands out
        new._seeds = [first + k for k in range(new.num_envs)]
        obs = new.reset()
        infos = [{**info, "lost": True, "TimeLimit.truncated": False} for info in new.reset_infos]
        self.parts[i] = new
        return obs, np.zeros(new.num_envs, dtype=np.float32), np.ones(new.num_envs, dtype=bool), infos


def split_populations(populations: Sequence[PopulationSpec], k: int) -> list[list[PopulationSpec]]:
    """K shards of consecutive populations (env order kept); one population is split by its envs.

    Raises:
        ValueError: ``k`` < 1, or more shards than there are envs (or populations to split).
    """
    if k < 1:
        raise ValueError(f"the number of Ray actors must be >= 1, got {k}")
    if len(populations) == 1:
        task, n, env = populations[0]
        if k > n:
            raise ValueError(f"{k} Ray actors for {n} envs: each actor needs at least one env")
        sizes = [len(chunk) for chunk in np.array_split(np.arange(n), k)]
        return [[(task, size, env)] for size in sizes]
    if k > len(populations):
        raise ValueError(f"{k} Ray actors for {len(populations)} populations: use at most one actor per population")
    return [[populations[i] for i in chunk] for chunk in np.array_split(np.arange(len(populations)), k)]
