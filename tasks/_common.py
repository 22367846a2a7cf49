"""Helpers shared by the built-in tasks: registration, seeded initialisation, classifiers."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lrenv.registry import register_task, registered_source
from lrenv.task import Task


def register(name: str, factory: type[Task]) -> None:
    """Register a built-in task; a second import of the same module is not an error.

    A module can run twice in one process (``importlib.reload``, or imported under two
    names); the task is then already registered by a class of the same module and name,
    which is fine. A different task under the same name is still the registry's error.
    """
    source = f"{factory.__module__}.{factory.__qualname__}"
    if registered_source(name) == source:
        return
    register_task(name, factory, source=source)


def build(constructor: Callable[[], nn.Module], generator: torch.Generator) -> nn.Module:
    """Build a module without touching torch's global RNG, on the generator's device.

    Module constructors initialise their parameters from the global RNG. Building on the
    ``meta`` device allocates and initialises nothing; ``to_empty`` then allocates
    uninitialised storage that :func:`init_parameters` fills from ``generator``.
    """
    with torch.device("meta"):
        module = constructor()
    return module.to_empty(device=generator.device)


@torch.no_grad()
def init_parameters(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Initialise every parameter of ``module`` from ``generator``, like PyTorch's defaults.

    The distributions are PyTorch's default ones (so results compare with ordinary
    training code), drawn from ``generator`` only:

    - ``Linear``, ``Conv1d``: weight and bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
      (what ``kaiming_uniform_(a=sqrt(5))`` gives).
    - ``Embedding``: ``N(0, 1)``.
    - ``GRU``/``LSTM``/``RNN``: every weight and bias ``U(-1/sqrt(hidden), 1/sqrt(hidden))``.

    Raises:
        TypeError: a parameter belongs to a module type this function does not know (so no
            parameter is ever left uninitialised by mistake).
    """
    done: set[int] = set()
    for sub in module.modules():
        own = list(sub.parameters(recurse=False))
        if not own:
            continue
        if isinstance(sub, (nn.Linear, nn.Conv1d)):
            fan_in = sub.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            for p in own:
                p.uniform_(-bound, bound, generator=generator)
        elif isinstance(sub, nn.Embedding):
            sub.weight.normal_(0.0, 1.0, generator=generator)
        elif isinstance(sub, nn.RNNBase):
            bound = 1.0 / math.sqrt(sub.hidden_size)
            for p in own:
                p.uniform_(-bound, bound, generator=generator)
        else:
            raise TypeError(f"init_parameters does not know how to initialise {type(sub).__name__}")
        done.update(id(p) for p in own)
    missing = [n for n, p in module.named_parameters() if id(p) not in done]
    if missing:  # pragma: no cover - every module with parameters is handled above
        raise RuntimeError(f"parameters left uninitialised: {missing}")
    return module


def seeded_module(constructor: Callable[[], nn.Module], generator: torch.Generator) -> nn.Module:
    """:func:`build` then :func:`init_parameters`: a fresh module drawn only from ``generator``."""
    return init_parameters(build(constructor, generator), generator)


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Standardise features with the train split's per-feature mean and std (float64 maths).

    Features that are constant in the train split keep their scale (std taken as 1).
    Returns float32 tensors, train first.
    """
    train = train.double()
    mean = train.mean(0)
    std = train.std(0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return [((t.double() - mean) / std).float().contiguous() for t in (train, *others)]
