"""sb3-contrib's ARS, counting timesteps as inner epochs, and with per-env rank fitness.

ARS evaluates each candidate with SB3's ``evaluate_policy``, whose callback fires once per env
per vector step; ARS adds ``n_envs`` timesteps at each of those calls, so with N envs a vector
step counted N² timesteps, and its callbacks saw no ``infos``. Here a vector step counts N
timesteps (the N inner epochs it trained, like every other algorithm of ``agents.train``),
and callbacks get that step's ``infos`` and ``dones`` once, as from ``learn()`` of PPO.

``rank_per_env=True`` (for paired seeds: every candidate plays one episode per env, the same
episodes) scores a candidate by its centred rank among the candidates on each env, summed over
the envs, instead of its summed return. Tasks whose returns move far more with the LR (a
quadratic's log loss), and single episodes that diverge (a fixed penalty), then weigh no more
than any other env: the fitness shaping of evolution strategies (Salimans et al. 2017), per
episode.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch as th
from sb3_contrib import ARS as ContribARS
from stable_baselines3.common.callbacks import BaseCallback

from lrenv.agents.callbacks import one_episode_per_env


def centred_ranks(returns: np.ndarray) -> np.ndarray:
    """Per column (env), each row's (candidate's) rank scaled to [-0.5, 0.5]; ties share their mean rank."""
    n = returns.shape[0]
    if n < 2:
        return np.zeros_like(returns, dtype=np.float64)
    ranks = np.empty_like(returns, dtype=np.float64)
    for j in range(returns.shape[1]):
        column = returns[:, j]
        order = column.argsort(kind="stable")
        r = np.empty(n)
        r[order] = np.arange(n, dtype=np.float64)
        for value in np.unique(column):  # ties: the mean of their ranks
            same = column == value
            r[same] = r[same].mean()
        ranks[:, j] = r
    return ranks / (n - 1) - 0.5


class ARS(ContribARS):
    """Augmented Random Search (sb3-contrib), one callback step per vector step; optionally per-env ranks.

    Args:
        rank_per_env: Score candidates by their centred ranks per env (one episode per env
            each; see the module doc) instead of their summed returns.
        *args, **kwargs: As sb3-contrib's ``ARS``.
    """

    _last_step: Any = None

    def __init__(self, *args: Any, rank_per_env: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rank_per_env = rank_per_env

    def _trigger_callback(self, _locals: dict[str, Any], _globals: dict[str, Any], callback: BaseCallback, n_envs: int) -> None:
        # called for every env still counting an episode; act on the first call of each vector step
        if _locals["new_observations"] is self._last_step:
            return
        self._last_step = _locals["new_observations"]  # holding it keeps its identity unique
        self.num_timesteps += n_envs
        callback.update_locals({"infos": _locals["infos"], "dones": _locals["dones"]})
        callback.on_step()

    def evaluate_candidates(self, candidate_weights: th.Tensor, callback: BaseCallback, async_eval: Any) -> th.Tensor:
        if not self.rank_per_env or async_eval is not None:
            return super().evaluate_candidates(candidate_weights, callback, async_eval)
        policy = copy.deepcopy(self.policy)
        self.ep_info_buffer = []
        callback.on_rollout_start()
        def on_step(infos: list[dict[str, Any]], dones: np.ndarray) -> None:
            self.num_timesteps += self.env.num_envs
            callback.update_locals({"infos": infos, "dones": dones})
            callback.on_step()

        returns = np.zeros((len(candidate_weights), self.env.num_envs))
        for k, weights in enumerate(candidate_weights):
            policy.load_from_vector(weights.cpu())
            returns[k], lengths = one_episode_per_env(policy, self.env, on_step)
            self._mimic_monitor_wrapper(returns[k], lengths)
        callback.on_rollout_end()
        return th.as_tensor(centred_ranks(returns).sum(1), dtype=th.float32, device=self.device)
