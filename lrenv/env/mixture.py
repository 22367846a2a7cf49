"""MixtureVecEnv: several VecEnvs (e.g. one BatchedVecEnv per task variant) as one SB3 VecEnv.

A policy that should serve many tasks, optimizers, budgets and base LRs trains on a
*distribution* of inner runs. Each :class:`~lrenv.env.vec_env.BatchedVecEnv` trains one task
variant as one batched population; a MixtureVecEnv puts several side by side, so one agent
steps all of them at once: env indices ``0 .. n_1 - 1`` are the first part's envs, and so on.
Every part keeps its own autoreset, so parts with different epoch budgets run side by side.

:class:`PairedSeeds` makes every reset start the same episodes until told to draw new
ones: with it, the candidates of one ARS iteration are compared on identical inner runs
(common random numbers), which removes the seed-to-seed noise of the inner training from
their differences.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn, VecEnvWrapper


class MixtureVecEnv(VecEnv):
    """The envs of several VecEnvs with the same spaces, as one VecEnv.

    Args:
        parts: The VecEnvs, in index order; they must share observation and action spaces.

    ``seed(s)`` gives env k the seed ``s + k`` over the whole mixture, as SB3's VecEnvs do.
    """

    def __init__(self, parts: Sequence[VecEnv]) -> None:
        parts = list(parts)
        if not parts or not all(isinstance(p, VecEnv) for p in parts):
            raise ValueError(f"MixtureVecEnv needs one or more SB3 VecEnvs, got {parts!r}")
        first = parts[0]
        for part in parts[1:]:
            if part.observation_space != first.observation_space or part.action_space != first.action_space:
                raise ValueError(
                    "the parts of a MixtureVecEnv must share their spaces: "
                    f"{part.observation_space} / {part.action_space} differs from {first.observation_space} / {first.action_space} "
                    "(use the same features and action mode in every part)"
                )
        self.parts = parts
        bounds = np.cumsum([0] + [p.num_envs for p in parts])
        self._slices = [slice(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
        self._actions: np.ndarray | None = None
        self.render_mode = None
        super().__init__(int(bounds[-1]), first.observation_space, first.action_space)

    def reset(self) -> VecEnvObs:
        obs, self.reset_infos = [], []
        for part, sl in zip(self.parts, self._slices):
            part._seeds = list(self._seeds[sl])
            part._options = list(self._options[sl])
            obs.append(part.reset())
            self.reset_infos.extend(part.reset_infos)
        self._reset_seeds()
        self._reset_options()
        return np.concatenate(obs)

    def step_async(self, actions: np.ndarray) -> None:
        actions = np.asarray(actions)
        if len(actions) != self.num_envs:
            raise ValueError(f"expected actions for {self.num_envs} envs, got {len(actions)}")
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async(actions)")
        for part, sl in zip(self.parts, self._slices):
            part.step_async(self._actions[sl])
        results = self._wait_all()
        self._actions = None
        obs, rewards, dones, infos = zip(*results)
        return np.concatenate(obs), np.concatenate(rewards), np.concatenate(dones), [info for part in infos for info in part]

    def _wait_all(self) -> list[VecEnvStepReturn]:
        """Every part's step results, in order (after each part's ``step_async``)."""
        return [part.step_wait() for part in self.parts]

    def close(self) -> None:
        for part in self.parts:
            part.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [self.parts[p].get_attr(attr_name, [k])[0] for p, k in self._locate(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        for p, k in self._locate(indices):
            self.parts[p].set_attr(attr_name, value, [k])

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any) -> list[Any]:
        return [self.parts[p].env_method(method_name, *method_args, indices=[k], **method_kwargs)[0] for p, k in self._locate(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [self.parts[p].env_is_wrapped(wrapper_class, [k])[0] for p, k in self._locate(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [image for part in self.parts for image in part.get_images()]

    def _locate(self, indices: VecEnvIndices) -> list[tuple[int, int]]:
        """(part, index within the part) of each global env index."""
        if indices is None:
            indices = range(self.num_envs)
        elif isinstance(indices, (int, np.integer)):
            indices = [int(indices)]
        out = []
        for i in indices:
            if not 0 <= i < self.num_envs:
                raise IndexError(f"env index {i} is out of range for {self.num_envs} envs")
            p = next(p for p, sl in enumerate(self._slices) if sl.start <= i < sl.stop)
            out.append((p, i - self._slices[p].start))
        return out


class PairedSeeds(VecEnvWrapper):
    """Every ``reset()`` starts the same episodes (env k: seed ``draw_seed + k``) until :meth:`next_draw`.

    Args:
        venv: The VecEnv to reset with fixed seeds.
        seed: Seed of the first draw; draw d uses ``seed + d * num_envs``, so no two draws share a seed.
    """

    def __init__(self, venv: VecEnv, seed: int) -> None:
        super().__init__(venv)
        self.first_seed = int(seed)
        self.draw = 0

    @property
    def draw_seed(self) -> int:
        return self.first_seed + self.draw * self.num_envs

    def next_draw(self) -> None:
        self.draw += 1

    def reset(self) -> VecEnvObs:
        self.venv.seed(self.draw_seed)
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        return self.venv.step_wait()


class NewDrawEachRollout(BaseCallback):
    """Moves a :class:`PairedSeeds` env to new episodes at the start of every rollout (an ARS iteration)."""

    def __init__(self, paired: PairedSeeds) -> None:
        super().__init__()
        self.paired = paired

    def _on_rollout_start(self) -> None:
        self.paired.next_draw()

    def _on_step(self) -> bool:
        return True
