"""lrenv: learn the learning-rate schedule of an inner PyTorch training run with RL.

``import lrenv`` registers the Gymnasium environment ``lrenv/LRControl-v0`` and the built-in
tasks (see :func:`list_tasks`). Nothing else happens at import: no data is generated.
"""

from __future__ import annotations

import gymnasium as gym

from lrenv.actions import ActionMapping
from lrenv.engine import Engine, EpochStats
from lrenv.env import LREnv
from lrenv.features import FEATURE_SETS, Observer
from lrenv.registry import list_tasks, make_task, register_task, unregister_task
from lrenv.task import ClassificationTask, Split, Task, TaskConfig, TaskData, classification_metrics
from lrenv.vec_env import BatchedVecEnv
from lrenv import testing

__version__ = "0.1.0"

ENV_ID = "lrenv/LRControl-v0"

if ENV_ID not in gym.registry:
    # no max_episode_steps: the env truncates at each task's own epoch budget
    gym.register(id=ENV_ID, entry_point="lrenv.env:LREnv")

import tasks as _builtin_tasks  # noqa: E402,F401  (registers the built-in tasks)

__all__ = [
    "ENV_ID",
    "ActionMapping",
    "BatchedVecEnv",
    "ClassificationTask",
    "Engine",
    "EpochStats",
    "FEATURE_SETS",
    "LREnv",
    "Observer",
    "Split",
    "Task",
    "TaskConfig",
    "TaskData",
    "classification_metrics",
    "list_tasks",
    "make_task",
    "register_task",
    "unregister_task",
]

# Trained policies as schedulers (appended by the agents work; SB3 is imported on use only)
from lrenv.policy import LoadedPolicy, load_policy  # noqa: E402
from lrenv.scheduler import PolicyScheduler, load_scheduler  # noqa: E402

__all__ += ["LoadedPolicy", "PolicyScheduler", "load_policy", "load_scheduler"]

# Baseline schedules as policies and the fair comparison harness (appended by the evaluation work)
from lrenv import baselines, evaluation  # noqa: E402

__all__ += ["baselines", "evaluation"]
