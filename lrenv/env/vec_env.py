"""BatchedVecEnv: N LREnv episodes of one task trained as one population, as an SB3 VecEnv.

Stable-Baselines3 agents step N environments at once; here the N inner runs are one
:class:`~lrenv.engine.Engine` population (one stacked computation where the model allows
it), so N runs cost far less than N separate envs. Observations, rewards, ``info`` and
episode ends are those of N separate :class:`~lrenv.env.LREnv` (same code): with the same
seeds and actions, env k gives the numbers ``LREnv`` k gives. Finished runs restart at once,
alone, as SB3 expects: the step's observation is the new episode's first one, the last one
is in ``info["terminal_observation"]``, and ``info["TimeLimit.truncated"]`` is always false
(the budget's end is a termination, see :class:`~lrenv.env.LREnv`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from lrenv.engine import Engine
from lrenv.env.actions import check_actions
from lrenv.env.config import EnvConfig
from lrenv.env.env import check_seed
from lrenv.env.episodes import EpisodeBatch
from lrenv.env.features import Observer
from lrenv.env.rewards import resolve_target
from lrenv.registry import make_task
from lrenv.task import Task

#: BatchedVecEnv's own arguments; every other keyword is a field of :class:`EnvConfig`.
VEC_ENV_ARGUMENTS = ("task", "n_envs", "seed", "batched", "config")


class BatchedVecEnv(VecEnv):
    """``n_envs`` episodes of one task in one batched population.

    Args:
        task: A registered task name or an :class:`lrenv.Task` (one task per population).
        n_envs: Number of parallel episodes N.
        seed: Seed of the first ``reset()`` (env k uses ``seed + k``, as SB3's ``VecEnv.seed``).
        batched: Stack the runs into one computation (``None``: when the model allows it).
        config: An :class:`lrenv.EnvConfig`; keyword settings are applied on top of it.
        **settings: Fields of :class:`lrenv.EnvConfig`, as for :class:`lrenv.LREnv`.
    """

    def __init__(
        self,
        task: str | Task = "MNIST1D-MLP-v0",
        n_envs: int = 8,
        *,
        seed: int | None = None,
        batched: bool | None = None,
        config: EnvConfig | None = None,
        **settings: Any,
    ) -> None:
        self.config = EnvConfig.from_kwargs(settings, base=config, owner="BatchedVecEnv", other_arguments=VEC_ENV_ARGUMENTS)
        if not isinstance(task, (str, Task)):
            raise TypeError(
                f"BatchedVecEnv trains one task per population, got {task!r}; for several tasks use "
                "one BatchedVecEnv per task or a DummyVecEnv of LREnv(task=[...])"
            )
        if not isinstance(n_envs, (int, np.integer)) or isinstance(n_envs, bool) or n_envs < 1:
            raise ValueError(f"n_envs must be a positive integer, got {n_envs!r}")
        n_envs = int(n_envs)
        seed = check_seed(seed, "BatchedVecEnv")
        if batched is not None and not isinstance(batched, bool):
            raise ValueError(f"batched must be None, True or False, got {batched!r}")
        self.task = make_task(task, **self.config.task_overrides)
        resolve_target(self.config.reward, self.config.target_loss, self.task.config.target_loss, self.task.name)
        self.engine = Engine(self.task, n_runs=n_envs, device=self.config.device, dtype=self.config.torch_dtype, batched=batched)
        self.episodes = EpisodeBatch(self.engine, self.config)
        self.render_mode = None
        self._rngs: list[np.random.Generator | None] = [None] * n_envs
        self._actions: np.ndarray | None = None
        actions = self.config.action_mapping()
        super().__init__(n_envs, Observer(self.config.features).space, actions.space)
        if seed is not None:
            self.seed(seed)

    # -- VecEnv API ------------------------------------------------------------------------

    def reset(self) -> VecEnvObs:
        for k, seed in enumerate(self._seeds):
            if seed is not None or self._rngs[k] is None:
                self._rngs[k], _ = seeding.np_random(seed)
        obs, infos = self.episodes.start(range(self.num_envs), [self._draw_run_seed(k) for k in range(self.num_envs)])
        self.reset_infos = infos
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        """Actions of the N envs: real numbers of shape ``(N, 1)`` or ``(N,)`` (rules: :func:`lrenv.env.actions.check_actions`)."""
        self._actions = check_actions(actions, self.num_envs)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async(actions)")
        obs, rewards, terminated, truncated, infos = self.episodes.step(self._actions)
        self._actions = None
        done = terminated | truncated
        finished = np.flatnonzero(done)
        for k, info in enumerate(infos):  # as DummyVecEnv: on every info
            info["TimeLimit.truncated"] = bool(truncated[k] and not terminated[k])
        for k in finished:
            infos[k]["terminal_observation"] = obs[k].copy()
        if len(finished):
            new_obs, reset_infos = self.episodes.start(finished, [self._draw_run_seed(k) for k in finished])
            obs[finished] = new_obs
            for k, info in zip(finished, reset_infos):
                self.reset_infos[k] = info
        return obs, rewards.astype(np.float32), done, infos

    def close(self) -> None:
        pass

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any) -> list[Any]:
        method = getattr(self, method_name)
        return [method(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]

    # -- helpers ---------------------------------------------------------------------------

    def _draw_run_seed(self, k: int) -> int:
        rng = self._rngs[k]
        if rng is None:  # stepping restarts before any reset(): seed from entropy, like gymnasium
            rng, _ = seeding.np_random(None)
            self._rngs[k] = rng
        return int(rng.integers(2**31 - 1))

    def _get_indices(self, indices: VecEnvIndices) -> Iterable[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return indices
