"""lrenv: learn the learning-rate schedule of an inner PyTorch training run with RL.

``import lrenv`` registers the Gymnasium environment ``lrenv/LRControl-v0`` and the built-in
tasks (see :func:`list_tasks`). Nothing else happens at import: no data is generated.

The data path, one direction: a :class:`Task` (data, model, loss) → the :class:`Engine`
(N runs trained as one population) → :class:`LREnv` / :class:`BatchedVecEnv` (observations,
actions, rewards, set by an :class:`EnvConfig`) → an SB3 agent (``lrenv.agents.train``) →
:func:`load_policy` / :func:`load_scheduler` (the policy in a user's loop; a closed-form
:class:`Formula` plays it too, :class:`FormulaScheduler`) →
:mod:`lrenv.evaluation` (the policy against tuned :mod:`lrenv.baselines`).
"""

from __future__ import annotations

import gymnasium as gym

from lrenv import testing
from lrenv.engine import Engine, EpochStats
from lrenv.env import FEATURE_SETS, ActionMapping, BatchedVecEnv, EnvConfig, LREnv, Observer
from lrenv.formula import Formula
from lrenv.policy import LoadedPolicy, PolicyFileError, load_policy
from lrenv.registry import list_tasks, make_task, register_task, unregister_task
from lrenv.scheduler import FormulaScheduler, PolicyScheduler, load_scheduler
from lrenv.task import ClassificationTask, Split, Task, TaskConfig, TaskData, classification_metrics

__version__ = "0.1.0"

ENV_ID = "lrenv/LRControl-v0"

if ENV_ID not in gym.registry:
    # no max_episode_steps: the env truncates at each task's own epoch budget
    gym.register(id=ENV_ID, entry_point="lrenv.env:LREnv")

from lrenv import baselines, evaluation, tasks  # noqa: E402  (tasks registers the built-in tasks)

__all__ = [
    "ENV_ID",
    "FEATURE_SETS",
    "Formula",
    "FormulaScheduler",
    "ActionMapping",
    "BatchedVecEnv",
    "ClassificationTask",
    "EnvConfig",
    "Engine",
    "EpochStats",
    "LREnv",
    "LoadedPolicy",
    "Observer",
    "PolicyFileError",
    "PolicyScheduler",
    "Split",
    "Task",
    "TaskConfig",
    "TaskData",
    "baselines",
    "classification_metrics",
    "evaluation",
    "list_tasks",
    "load_policy",
    "load_scheduler",
    "make_task",
    "register_task",
    "tasks",
    "testing",
    "unregister_task",
]
