"""The environment: observations, actions and rewards around an engine population.

``config`` (:class:`EnvConfig`, every setting) → ``features`` (observations), ``actions``
(action → learning rate), ``rewards`` → ``episodes`` (N episodes of one engine in lockstep)
→ ``env`` (:class:`LREnv`, a Gymnasium env, N = 1) and ``vec_env`` (:class:`BatchedVecEnv`,
an SB3 VecEnv, N > 1).
"""

from lrenv.env.actions import ActionMapping
from lrenv.env.config import DTYPES, EnvConfig
from lrenv.env.env import LREnv
from lrenv.env.episodes import EpisodeBatch
from lrenv.env.features import FEATURE_SETS, Observer
from lrenv.env.vec_env import BatchedVecEnv

__all__ = ["DTYPES", "FEATURE_SETS", "ActionMapping", "BatchedVecEnv", "EnvConfig", "EpisodeBatch", "LREnv", "Observer"]
