"""The task registry: tasks are created by name, like Gymnasium environments.

Built-in tasks register when :mod:`tasks` is imported (``import lrenv`` does that).
Third-party packages register through the entry-point group ``lrenv.tasks``: each entry
point's name is the task name and its object a factory (a :class:`~lrenv.task.Task`
subclass or a function returning a Task). Entry points are read on the first lookup, not
at import time.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from lrenv.task import Task, check_overrides, with_overrides

ENTRY_POINT_GROUP = "lrenv.tasks"

TaskFactory = Callable[[], Task]


@dataclass(frozen=True)
class TaskSpec:
    """What :func:`register_task` recorded: a factory and default overrides."""

    name: str
    factory: TaskFactory
    defaults: dict[str, object] = field(default_factory=dict)
    source: str = "register_task"


class UnknownTaskError(KeyError, ValueError):
    """A task name that is not registered; the message lists the registered ones.

    A KeyError (a failed lookup) and a ValueError (a bad argument value), so both catch it.
    """

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


_REGISTRY: dict[str, TaskSpec] = {}
_entry_points_loaded = False


def register_task(name: str, factory: TaskFactory, *, source: str = "register_task", **defaults: object) -> None:
    """Register a task factory under ``name``.

    Args:
        name: Task id, by convention ``Name-vN`` (bump N when data, model, loss or budget change).
        factory: Called with no arguments, returns a :class:`~lrenv.task.Task`; a Task
            subclass works as is. Defaults and overrides are applied to its config after.
        source: Where the registration came from (shown in errors).
        **defaults: :class:`~lrenv.task.TaskConfig` fields that override the task's own defaults.

    Raises:
        ValueError: ``name`` is not a non-empty string or is already registered, or a
            default has an invalid value (checked now, as far as it can be without the task).
        TypeError: ``factory`` is not callable or a default is not a TaskConfig field.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a task name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"the factory of task {name!r} must be callable (a Task subclass or a function returning a Task), got {factory!r}")
    # bad values fail here, where the registration is, not at the first make_task
    check_overrides(defaults, f"register_task({name!r})", "default")
    if name in _REGISTRY:
        raise ValueError(
            f"task {name!r} is already registered (by {_REGISTRY[name].source}); "
            f"pick another name or bump its version. Registered: {', '.join(sorted(_REGISTRY))}"
        )
    _REGISTRY[name] = TaskSpec(name, factory, dict(defaults), source)


def unregister_task(name: str) -> None:
    """Remove a registered task (for tests and interactive sessions)."""
    _load_entry_points()
    if name not in _REGISTRY:
        raise UnknownTaskError(_unknown_message(name))
    del _REGISTRY[name]


def make_task(name: str | Task, **overrides: object) -> Task:
    """Create a registered task, with ``overrides`` of its :class:`~lrenv.task.TaskConfig`.

    A :class:`~lrenv.task.Task` instance is returned as is (with overrides applied).

    Raises:
        UnknownTaskError: (a KeyError) ``name`` is not registered; the message lists the registered names.
        TypeError: an override is not a TaskConfig field, or the factory returned no Task.
        ValueError: an override has an invalid value, or the factory raised (chained).
    """
    if isinstance(name, Task):
        return _configured(name, overrides) if overrides else name
    if not isinstance(name, str):
        raise TypeError(f"a task must be given by its registered name or as an lrenv.Task instance, got {name!r}")
    _load_entry_points()
    spec = _REGISTRY.get(name)
    if spec is None:
        raise UnknownTaskError(_unknown_message(name))
    try:
        task = spec.factory()
    except Exception as exc:  # name the task: the factory is user code, maybe registered far away
        raise ValueError(f"the factory of task {name!r} (registered by {spec.source}) raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(task, Task):
        raise TypeError(f"the factory of task {name!r} returned {type(task).__name__}, not an lrenv.Task")
    task.name = name
    return _configured(task, {**spec.defaults, **overrides})


def registered_source(name: str) -> str | None:
    """Where task ``name`` was registered from (``None`` if it is not registered by hand).

    Entry points are not loaded by this call.
    """
    spec = _REGISTRY.get(name)
    return spec.source if spec is not None else None


def list_tasks() -> list[str]:
    """Names of all registered tasks, sorted."""
    _load_entry_points()
    return sorted(_REGISTRY)


def _configured(task: Task, overrides: dict[str, object]) -> Task:
    """A shallow copy of ``task`` with config overrides (tasks are stateless, so this is cheap)."""
    if not overrides:
        return task
    new = copy.copy(task)
    new.config = with_overrides(task.config, overrides, what=f"task {task.name!r}")
    return new


def _unknown_message(name: object) -> str:
    return f"unknown task {name!r}; registered tasks: {', '.join(sorted(_REGISTRY)) or '(none)'}"


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            warnings.warn(
                f"entry point {ep.value} of group {ENTRY_POINT_GROUP!r} is ignored: task {ep.name!r} "
                f"is already registered by {_REGISTRY[ep.name].source}",
                stacklevel=2,
            )
            continue
        register_task(ep.name, ep.load(), source=f"entry point {ep.value}")


def reload_entry_points() -> None:
    """Read the ``lrenv.tasks`` entry points again (after installing a package at run time)."""
    global _entry_points_loaded
    _entry_points_loaded = False
    _load_entry_points()
