"""Fuzzing the input boundaries with hypothesis (issue #14).

Every input gives either a clear ``ValueError``/``TypeError`` (raised by lrenv's own code,
saying what is allowed) or finite observations, rewards and learning rates: never an error
from deep inside torch or numpy, never garbage (a bool or a string read as a number)
accepted silently. Each strategy draws an input together with the errors it may raise;
an empty set means it must work. The rules under test:

* actions: real numbers (float/int arrays, Python numbers, tensors) of shape ``()``, ``(1,)``
  or ``(1, 1)`` for LREnv, ``(N,)`` or ``(N, 1)`` for BatchedVecEnv; finite values outside
  [-1, 1] are clipped; bool/str/object/complex is a TypeError, another shape or NaN/inf a
  ValueError;
* TaskConfig, EnvConfig, LREnv and register_task reject wrong types and out-of-range values
  with a ValueError naming the field (TypeError for unknown keys); every config they accept
  trains to finite numbers (hence: Schedule-Free optimizers need momentum >= 1e-6);
* PolicyScheduler takes real numbers or one-element tensors; a NaN/inf loss after epoch 0 is
  a diverged value and still gives a finite LR, 0 and negative losses are floored as in the
  env, non-finite epoch-0 losses and a negative std are a ValueError.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from collections.abc import Mapping

import numpy as np
import pytest
import torch
from conftest import TinyClassifier
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import lrenv
from lrenv import BatchedVecEnv, EnvConfig, LREnv, PolicyScheduler, TaskConfig
from lrenv.env.actions import ACTION_MODES, BASE_SHAPES
from lrenv.env.features import FEATURE_SETS
from lrenv.env.rewards import REWARD_FUNCTIONS
from lrenv.task import OPTIMIZERS

#: LRENV_FUZZ_SCALE=10 runs ten times the examples (a deeper search, minutes instead of seconds).
SCALE = int(os.environ.get("LRENV_FUZZ_SCALE", "1"))


def fuzz(max_examples: int) -> settings:
    # no example database: the checkout is shared, and a replayed failure from another run misleads.
    # The default run draws the same examples every time, so CI passes or fails on the code alone;
    # a deeper search (LRENV_FUZZ_SCALE > 1) draws fresh ones.
    return settings(
        max_examples=max_examples * SCALE, deadline=None, database=None, derandomize=SCALE == 1, suppress_health_check=[HealthCheck.too_slow]
    )


N_ENVS = 3
BASE = TinyClassifier.default_config
LOW, HIGH = BASE.lr_range
OK: frozenset[type] = frozenset()
T, V = frozenset({TypeError}), frozenset({ValueError})
MISSING = object()  # an argument not passed
SAYS_WHAT_IS_ALLOWED = re.compile(r"must|choose|allowed|expected|use |pick|needs")


def tiny_task() -> TinyClassifier:
    task = TinyClassifier(epochs=2)
    task.name = "FuzzTiny-v0"
    return task


def assert_clear(exc: BaseException, *names: str, says_allowed: bool = True) -> None:
    """Raised by lrenv itself (not inside torch/numpy), naming one of ``names`` and what is allowed."""
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    where = tb.tb_frame.f_code.co_filename
    assert "/lrenv/" in where, f"{type(exc).__name__} raised in {where}: {exc}"
    message = str(exc)
    if says_allowed:
        assert SAYS_WHAT_IS_ALLOWED.search(message), message
    if names:
        assert any(n in message for n in names), f"{message!r} names none of {names}"


def raises(errors: frozenset[type], call, *names: str, says_allowed: bool = True) -> BaseException:
    with pytest.raises(tuple(errors)) as info:
        call()
    assert_clear(info.value, *names, says_allowed=says_allowed)
    event(f"rejected: {type(info.value).__name__}")  # shown by --hypothesis-show-statistics
    return info.value


def is_real(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def number(v: object) -> float:
    """A real number, a tensor or an array of one as a float (a huge int is ±inf)."""
    if isinstance(v, torch.Tensor):
        return float(v.double().item())
    if isinstance(v, np.ndarray):
        return float(v.astype(np.float64).reshape(()))
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def clipped_actions(action: object, n: int) -> np.ndarray:
    """What a valid action means: its values as float64, clipped to [-1, 1]."""
    if isinstance(action, torch.Tensor):
        action = action.double().numpy()
    if isinstance(action, int):
        action = max(-1, min(1, action))
    return np.clip(np.asarray(action, dtype=np.float64), -1, 1).reshape(n)


def absolute_lr(a: np.ndarray) -> np.ndarray:
    return LOW * (HIGH / LOW) ** ((a + 1) / 2)


# -- actions ---------------------------------------------------------------------------------

FLOAT_DTYPES = [np.float16, np.float32, np.float64]
INT_DTYPES = [np.int8, np.int32, np.int64, np.uint8, np.uint64]


def real_arrays(shape: tuple[int, ...], dtypes=FLOAT_DTYPES + INT_DTYPES) -> st.SearchStrategy[np.ndarray]:
    def arrays(dtype):
        if np.issubdtype(dtype, np.floating):  # tiny, subnormal and the largest finite values
            return hnp.arrays(dtype, shape, elements=hnp.from_dtype(np.dtype(dtype), allow_nan=False, allow_infinity=False))
        return hnp.arrays(dtype, shape)

    return st.sampled_from(dtypes).flatmap(arrays)


def _poke(args: tuple[np.ndarray, int, float]) -> np.ndarray:
    a, i, value = args
    a = a.copy()
    a.reshape(-1)[i] = value
    return a


def non_finite_arrays(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    size = max(1, int(np.prod(shape)))
    return st.tuples(real_arrays(shape, FLOAT_DTYPES), st.integers(0, size - 1), st.sampled_from([np.nan, np.inf, -np.inf])).map(_poke)


def action_cases(n: int, scalar_ok: bool) -> st.SearchStrategy[tuple[object, frozenset[type]]]:
    """(action, errors it may raise) for ``n`` runs."""
    good = [(n,), (n, 1)] + ([()] if scalar_ok else [])
    bad = sorted({(), (0,), (n - 1,), (n + 1,), (n, 2), (1, n + 1), (2, n), (n, 1, 1)} - set(good))
    good_shapes, bad_shapes = st.sampled_from(good), st.sampled_from(bad)
    ok = st.one_of(
        good_shapes.flatmap(real_arrays),
        good_shapes.flatmap(real_arrays).map(lambda a: a.tolist()),  # Python lists and scalars
        good_shapes.flatmap(lambda s: real_arrays(s, FLOAT_DTYPES)).map(torch.from_numpy),
        good_shapes.flatmap(lambda s: real_arrays(s, [np.float16])).map(lambda a: torch.from_numpy(a).to(torch.bfloat16)),
        *([st.integers(), st.floats(allow_nan=False, allow_infinity=False)] if scalar_ok else []),
    )
    bad_type = st.one_of(
        good_shapes.flatmap(lambda s: hnp.arrays(np.bool_, s)),
        good_shapes.flatmap(lambda s: hnp.arrays(np.bool_, s)).map(torch.from_numpy),
        good_shapes.flatmap(lambda s: hnp.arrays(object, s, elements=st.floats(-1, 1))),
        good_shapes.flatmap(lambda s: hnp.arrays(np.complex128, s, elements=st.complex_numbers(max_magnitude=2))),
        good_shapes.flatmap(lambda s: hnp.arrays("U3", s, elements=st.sampled_from(["0.5", "1", "nan", "", "a"]))),
        good_shapes.map(lambda s: np.full(s, np.datetime64("2026-01-01"))),
        st.just([None] * n),
    )
    bad_type_any_shape = st.one_of(st.booleans(), st.text(max_size=3), st.none(), st.dictionaries(st.text(max_size=2), st.floats(), max_size=2))
    bad_shape = st.one_of(
        bad_shapes.flatmap(real_arrays),
        bad_shapes.flatmap(real_arrays).map(lambda a: a.tolist()),
        st.just([[0.1], [0.2, 0.3]]),  # ragged
    )
    non_finite = st.one_of(
        good_shapes.flatmap(non_finite_arrays),
        good_shapes.flatmap(non_finite_arrays).map(torch.from_numpy),
        *([st.sampled_from([math.nan, math.inf, -math.inf])] if scalar_ok else []),
    )
    return st.one_of(
        ok.map(lambda a: (a, OK)),
        bad_type.map(lambda a: (a, T)),
        bad_type_any_shape.map(lambda a: (a, T if scalar_ok else T | V)),
        bad_shape.map(lambda a: (a, V)),
        non_finite.map(lambda a: (a, V)),
    )


class Episode:
    """One env for a whole test (each reset builds a model), reset when its episode ends."""

    def __init__(self, env: LREnv) -> None:
        self.env, self.done, self.lr = env, True, math.nan

    def ready(self) -> LREnv:
        if self.done:
            _, info = self.env.reset(seed=0)
            self.done, self.lr = False, info["lr"]
        return self.env


@pytest.fixture(scope="module", params=[("absolute", "standard"), ("relative", "minimal")], ids=["absolute", "relative"])
def episode(request) -> Episode:
    mode, features = request.param
    return Episode(LREnv(tiny_task(), device="cpu", action_mode=mode, features=features))


@fuzz(150)
@given(case=action_cases(1, scalar_ok=True))
def test_lrenv_step_takes_real_actions_and_rejects_the_rest(episode, case):
    action, errors = case
    env = episode.ready()
    if errors:
        raises(errors, lambda: env.step(action), "action")
        action = 0.0  # a rejected action leaves the episode as it was: a valid step works
    else:
        event("accepted")
    obs, reward, terminated, truncated, info = env.step(action)
    assert env.observation_space.contains(obs) and np.all(np.isfinite(obs)) and math.isfinite(reward)
    a = clipped_actions(action, 1)
    if env.config.action_mode == "absolute":
        want = absolute_lr(a)[0]
    else:
        want = min(max(episode.lr * 2.0 ** a[0], LOW), HIGH)
    assert info["lr"] == pytest.approx(want, rel=1e-12)
    episode.lr, episode.done = info["lr"], terminated or truncated


@pytest.fixture(scope="module")
def venv() -> BatchedVecEnv:
    venv = BatchedVecEnv(tiny_task(), N_ENVS, device="cpu", seed=0)
    venv.reset()
    return venv


@fuzz(120)
@given(case=action_cases(N_ENVS, scalar_ok=False))
def test_batched_vec_env_takes_n_actions_and_rejects_the_rest(venv, case):
    actions, errors = case
    if errors:
        raises(errors, lambda: venv.step(actions), "action")
        actions = np.zeros(N_ENVS)
    else:
        event("accepted")
    obs, rewards, dones, infos = venv.step(actions)  # finished runs restart on their own
    assert obs.shape == (N_ENVS, 8) and all(venv.observation_space.contains(o) for o in obs)
    assert rewards.dtype == np.float32 and np.all(np.isfinite(rewards)) and dones.dtype == bool
    np.testing.assert_allclose([i["lr"] for i in infos], absolute_lr(clipped_actions(actions, N_ENVS)), rtol=1e-12)


# -- PolicyScheduler -------------------------------------------------------------------------


class StandInPolicy:
    """What PolicyScheduler uses of a LoadedPolicy (no training): checks every observation."""

    name = "stand-in"

    def __init__(self, env_config: EnvConfig | None = None, action: object = MISSING) -> None:
        self.env_config = env_config or EnvConfig()
        self.action = action
        self.space = lrenv.Observer(self.env_config.features).space

    def task_config(self, task: str | None = None) -> dict:
        return {"epochs": 2, "lr_range": [LOW, HIGH]}

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        assert obs.shape == (1, self.space.shape[0]) and self.space.contains(obs[0]), obs
        if self.action is not MISSING:
            return self.action
        return np.tanh(obs.sum(1, keepdims=True)).astype(np.float32)  # garbage in would show here


#: Losses that are numbers: 0, negatives, NaN, ±inf, huge and subnormal ones, in every form.
real_losses = st.one_of(
    st.floats(),
    st.sampled_from([0.0, -0.0, -1.0, 1e-320, 1e308, math.nan, math.inf, -math.inf]),
    st.integers(),
    st.floats().map(np.float64),
    st.floats(width=16).map(np.float16),
    st.floats().map(np.array),
    st.floats(width=32).map(torch.tensor),
    st.floats(width=32).map(lambda x: torch.tensor([x], dtype=torch.float64)),  # one element
    st.floats(width=32).map(lambda x: torch.tensor(x, dtype=torch.bfloat16)),
    st.integers(-5, 5).map(torch.tensor),
)
bad_losses = st.one_of(
    st.booleans(),
    st.just(np.bool_(False)),
    st.just(torch.tensor(True)),
    st.text(max_size=4),
    st.sampled_from(["0.5", "nan"]),
    st.complex_numbers(max_magnitude=5),
    st.lists(st.floats(), max_size=2),
    hnp.arrays(np.float64, st.sampled_from([(2,), (0,), (2, 2)])).map(torch.from_numpy),  # several elements
    hnp.arrays(np.float32, st.sampled_from([(3,), (1, 2)])),
    st.dictionaries(st.text(max_size=1), st.floats(), max_size=1),
)
loss_cases = st.one_of(real_losses.map(lambda v: (v, OK)), bad_losses.map(lambda v: (v, T)))
optional_loss_cases = st.one_of(st.just((MISSING, OK)), loss_cases)


def scheduler_errors(valid, train, std, started: bool) -> frozenset[type]:
    """The errors one step(valid_loss=valid, train_loss=train, train_loss_std=std) may raise."""
    (valid, verr), (train, terr), (std, serr) = valid, train, std
    errors = verr | terr | serr
    if errors:
        return errors
    if std is not MISSING and number(std) < 0:
        return V
    if not started and not all(math.isfinite(number(v)) for v in (valid, train) if v is not MISSING):
        return V
    return OK


def step_kwargs(valid, train, std) -> dict:
    given_ = {"valid_loss": valid[0], "train_loss": train[0], "train_loss_std": std[0]}
    return {k: v for k, v in given_.items() if v is not MISSING}


@fuzz(120)
@given(
    features=st.sampled_from(list(FEATURE_SETS)),
    mode=st.sampled_from(ACTION_MODES),
    steps=st.lists(st.tuples(loss_cases, optional_loss_cases, optional_loss_cases), min_size=1, max_size=6),
)
def test_scheduler_step_takes_any_real_loss_and_rejects_the_rest(features, mode, steps):
    policy = StandInPolicy(EnvConfig(features=features, action_mode=mode))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = PolicyScheduler(optimizer, policy)
    started = False
    for valid, train, std in steps:
        errors = scheduler_errors(valid, train, std, started)
        lrs = list(scheduler.lrs)
        if errors:
            raises(errors, functools.partial(scheduler.step, **step_kwargs(valid, train, std)), "loss")
            assert scheduler.lrs == lrs  # nothing was half-applied
            continue
        scheduler.step(**step_kwargs(valid, train, std))
        event("accepted")
        started = True
        lr = optimizer.param_groups[0]["lr"]
        assert scheduler.lrs == [*lrs, lr] and math.isfinite(lr) and LOW * (1 - 1e-12) <= lr <= HIGH * (1 + 1e-12)
        assert np.all(np.isfinite(scheduler.observation))


def positive_int_ok(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and 1 <= v < 2**63


def seed_ok(v: object) -> bool:
    return v is None or (isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v >= 0)


def lr_range_ok(v: object) -> bool:
    if not (isinstance(v, (tuple, list, np.ndarray)) and len(v) == 2 and all(is_real(x) for x in v)):
        return False
    low, high = number(v[0]), number(v[1])
    return 0 < low < high < math.inf and math.isfinite(high / low)


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` three times in four: with several arguments drawn at once, some examples pass."""
    return st.one_of(good, good, good, bad)


ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.just(np.bool_(True)),
    st.integers(),
    st.floats(),
    st.floats(width=32).map(np.float32),
    st.integers(-10, 10**6).map(np.int64),
    st.text(max_size=4),
    st.sampled_from(["3", "0.1", "sgd ", "nan", ""]),
    st.binary(max_size=2),
    st.complex_numbers(max_magnitude=10),
    st.lists(st.floats(), max_size=3),
    st.tuples(st.floats(), st.floats()),
    st.floats(allow_nan=False).map(torch.tensor),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
lr_ranges = st.one_of(
    st.tuples(st.floats(), st.floats()),
    st.tuples(st.floats(1e-6, 1), st.floats(1, 100)),
    st.tuples(st.floats(1e-6, 1), st.floats(1, 100)).map(np.array),
    st.lists(st.floats(1e-6, 10), max_size=3),
    st.tuples(st.integers(-1, 3), st.integers(1, 10**400)),
    st.sampled_from([(1e-3, 1e308), (5e-324, 1.0), {1e-3, 1.0}, "ab", (True, 2)]),
)


@fuzz(80)
@given(
    epochs=mostly(st.one_of(st.none(), st.integers(1, 20)), st.one_of(st.integers(-2, 0), ANYTHING)),
    lr_range=mostly(st.one_of(st.none(), st.tuples(st.floats(1e-6, 1), st.floats(1.01, 100))), st.one_of(lr_ranges, ANYTHING)),
    deterministic=mostly(st.booleans(), ANYTHING),
    initial_valid=mostly(st.one_of(st.just((MISSING, OK)), st.floats(0.1, 10).map(lambda v: (v, OK))), loss_cases),
    initial_train=mostly(st.one_of(st.just((MISSING, OK)), st.floats(0.1, 10).map(lambda v: (v, OK))), loss_cases),
)
def test_scheduler_arguments_are_checked(epochs, lr_range, deterministic, initial_valid, initial_train):
    errors = set(initial_valid[1] | initial_train[1])
    if epochs is not None and not positive_int_ok(epochs):
        errors.add(ValueError)
    if lr_range is not None and not lr_range_ok(lr_range):
        errors.add(ValueError)
    if not isinstance(deterministic, (bool, np.bool_)):
        errors.add(TypeError)
    losses = [v for v, _ in (initial_valid, initial_train) if v is not MISSING]
    if not errors and (not all(math.isfinite(number(v)) for v in losses) or (initial_valid[0] is MISSING and losses)):
        errors.add(ValueError)
    kwargs = {"epochs": epochs, "lr_range": lr_range, "deterministic": deterministic}
    kwargs.update({k: v for k, (v, _) in (("initial_valid_loss", initial_valid), ("initial_train_loss", initial_train)) if v is not MISSING})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    if errors:
        raises(frozenset(errors), lambda: PolicyScheduler(optimizer, StandInPolicy(), **kwargs))
        return
    event("accepted")
    scheduler = PolicyScheduler(optimizer, StandInPolicy(), **kwargs)
    assert type(scheduler.epochs) is int and all(type(v) is float for v in scheduler.lr_range)
    assert len(scheduler.lrs) == (initial_valid[0] is not MISSING) and all(math.isfinite(lr) for lr in scheduler.lrs)


@fuzz(60)
@given(case=action_cases(1, scalar_ok=True))
def test_scheduler_maps_policy_actions_like_the_env(case):
    action, errors = case
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    build = lambda: PolicyScheduler(optimizer, StandInPolicy(action=action), initial_valid_loss=1.0)  # noqa: E731
    if errors:
        raises(errors, build, "action")
        return
    assert build().lrs[0] == pytest.approx(absolute_lr(clipped_actions(action, 1))[0], rel=1e-12)


# -- TaskConfig, EnvConfig, LREnv settings ---------------------------------------------------

FIELD_VALUES = {
    "epochs": st.one_of(st.integers(-2, 1000), st.integers(1, 100).map(np.int64), st.sampled_from([1.5, 3.0, True, "3"]), ANYTHING),
    "batch_size": st.one_of(st.integers(-2, 1000), st.integers(1, 100).map(np.int32), ANYTHING),
    "optimizer": st.one_of(st.sampled_from(OPTIMIZERS), ANYTHING),
    "lr_range": st.one_of(lr_ranges, ANYTHING),
    "default_lr": st.one_of(st.floats(1e-6, 50), ANYTHING),
    "momentum": st.one_of(st.floats(-0.5, 1.5), ANYTHING),
    "weight_decay": st.one_of(st.floats(-1, 1e3), ANYTHING),
    "divergence_factor": st.one_of(st.floats(0, 1e3), st.just(math.inf), ANYTHING),
    "target_loss": st.one_of(st.none(), st.floats(-1, 5), ANYTHING),
}


def field_ok(name: str, v: object) -> bool:
    """The rules of TaskConfig's fields, written out independently of lrenv."""
    if name in ("epochs", "batch_size"):
        return positive_int_ok(v)
    if name == "optimizer":
        return isinstance(v, str) and v in OPTIMIZERS
    if name == "lr_range":
        return lr_range_ok(v)
    if name == "target_loss":
        return v is None or (is_real(v) and math.isfinite(number(v)))
    if not is_real(v):
        return False
    x = number(v)
    return {
        "default_lr": 0 < x < math.inf,
        "momentum": 0 <= x < 1,
        "weight_decay": 0 <= x < math.inf,
        "divergence_factor": x > 1,
    }[name]


def config_problems(overrides: Mapping[str, object], base: TaskConfig) -> list[str]:
    """Fields of ``overrides`` that must be reported (``default_lr`` outside the range too)."""
    bad = [name for name, v in overrides.items() if not field_ok(name, v)]
    if not bad:
        low, high = (number(x) for x in overrides.get("lr_range", base.lr_range))
        if not low <= number(overrides.get("default_lr", base.default_lr)) <= high:
            bad = ["default_lr"]
        elif overrides.get("optimizer", base.optimizer).startswith("schedulefree_") and number(overrides.get("momentum", base.momentum)) < 1e-6:
            bad = ["momentum"]  # Schedule-Free divides by it
    return bad


task_overrides = st.lists(
    st.sampled_from(TaskConfig.field_names()).flatmap(lambda f: st.tuples(st.just(f), FIELD_VALUES[f])),
    max_size=3,
    unique_by=lambda kv: kv[0],
).map(dict)


@fuzz(400)
@given(overrides=task_overrides)
def test_task_config_rejects_bad_fields_and_normalises_good_ones(overrides):
    bad = config_problems(overrides, TaskConfig())
    if bad:
        raises(V, lambda: TaskConfig(**overrides), *bad)
    else:
        event("accepted")
        cfg = TaskConfig(**overrides)
        assert type(cfg.epochs) is int and type(cfg.batch_size) is int and type(cfg.optimizer) is str
        assert type(cfg.lr_range) is tuple and all(type(v) is float for v in (*cfg.lr_range, cfg.default_lr, cfg.momentum))
        json.dumps(dataclasses.asdict(cfg), allow_nan=True)  # plain numbers: config.json can hold it
        for name, v in overrides.items():
            stored = getattr(cfg, name)  # float fields hold the float of the input (an int past 2**53 rounds)
            assert stored == (tuple(number(x) for x in v) if name == "lr_range" else number(v) if isinstance(stored, float) else v)
    # the same overrides on a task instance (its own base config) and as EnvConfig.task_config
    bad = config_problems(overrides, BASE)
    if bad:
        raises(V, lambda: lrenv.make_task(tiny_task(), **overrides), *bad)
    else:
        assert lrenv.make_task(tiny_task(), **overrides).config == dataclasses.replace(BASE, **{"epochs": 2, **overrides})
    per_field = [name for name, v in overrides.items() if not field_ok(name, v)]
    if per_field:
        raises(V, lambda: EnvConfig(task_config=overrides), *per_field)
    else:
        assert EnvConfig(task_config=overrides).task_config.keys() == overrides.keys()


valid_overrides = st.fixed_dictionaries(
    {
        "epochs": st.integers(1, 3),
        "batch_size": st.integers(1, 500),
        "optimizer": st.sampled_from(OPTIMIZERS),
        "momentum": st.one_of(st.sampled_from([0.0, 1e-300, 1e-6]), st.floats(0, 0.999)),
        "weight_decay": st.floats(0, 1e3),
        "divergence_factor": st.one_of(st.floats(1.001, 1e6), st.just(math.inf)),
        "target_loss": st.floats(0, 5),
    }
)


@st.composite
def lr_settings(draw) -> dict:
    """A valid (lr_range, default_lr) anywhere from 1e-8 to 1e8, ratio up to 1e12."""
    low = 10 ** draw(st.floats(-8, 8))
    high = low * 10 ** draw(st.floats(0.01, 12))
    default = low * (high / low) ** draw(st.floats(0, 1))
    return {"lr_range": (low, high), "default_lr": min(max(default, low), high)}  # rounding may step out


@fuzz(30)
@given(
    overrides=valid_overrides,
    lrs=lr_settings(),
    features=st.sampled_from(list(FEATURE_SETS)),
    mode=st.sampled_from(ACTION_MODES),
    reward=st.sampled_from(list(REWARD_FUNCTIONS)),
    dtype=st.sampled_from(["float32", "float64"]),
    n_envs=st.sampled_from([None, 2]),  # None: LREnv; 2: a BatchedVecEnv population (the engine's stacked path)
    actions=st.lists(st.floats(-2, 2), min_size=3, max_size=3),
)
def test_any_valid_task_config_trains_to_finite_numbers(overrides, lrs, features, mode, reward, dtype, n_envs, actions):
    task_config = {**overrides, **lrs}
    settings_ = {"device": "cpu", "task_config": task_config, "features": features, "action_mode": mode, "reward": reward, "dtype": dtype}
    build = (lambda: LREnv(tiny_task(), **settings_)) if n_envs is None else (lambda: BatchedVecEnv(tiny_task(), n_envs, seed=0, **settings_))
    if config_problems(task_config, BASE):  # a Schedule-Free optimizer with momentum < 1e-6
        raises(V, build, "momentum")
        return
    env = build()
    low, high = lrs["lr_range"]
    if n_envs is None:
        obs, info = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        for a in actions:
            obs, reward_, terminated, truncated, info = env.step(np.float32(a))
            assert env.observation_space.contains(obs) and math.isfinite(reward_)
            assert low * (1 - 1e-9) <= info["lr"] <= high * (1 + 1e-9)
            if terminated or truncated:
                break
    else:
        assert all(env.observation_space.contains(o) for o in env.reset())
        for a in actions:
            obs, rewards, _, infos = env.step(np.array([[a], [-a]], np.float32))
            assert all(env.observation_space.contains(o) for o in obs) and np.all(np.isfinite(rewards))
            assert all(low * (1 - 1e-9) <= i["lr"] <= high * (1 + 1e-9) for i in infos)


ENV_VALUES = {
    "features": st.one_of(st.sampled_from(list(FEATURE_SETS)), ANYTHING, st.just(["standard"])),
    "action_mode": st.one_of(st.sampled_from(ACTION_MODES), ANYTHING),
    "relative_factor": st.one_of(st.floats(0, 10), ANYTHING),
    "base_shape": st.one_of(st.sampled_from(list(BASE_SHAPES)), ANYTHING),
    "base_lr_spread": st.one_of(st.floats(0, 20), ANYTHING),
    "reward": st.one_of(st.sampled_from(list(REWARD_FUNCTIONS)), ANYTHING),
    "divergence_penalty": st.one_of(st.floats(-1, 10), ANYTHING),
    "target_loss": st.one_of(st.none(), st.floats(-1, 5), ANYTHING),
    "task_config": st.one_of(st.none(), task_overrides, ANYTHING, st.just({"epoch": 3}), st.just({1: 2})),
    "dtype": st.one_of(st.sampled_from(["float32", "float64"]), ANYTHING),
    "device": st.one_of(st.sampled_from(["cpu", "auto", "cuda", "cuda:1", "cpu:0", "meta", "mps", "gpu", ""]), ANYTHING),
}
#: What an error message says for each setting (the setting's name, or its words).
ENV_NAMES = {"features": ("feature set",), "action_mode": ("action mode",), "task_config": ("task_config",)}


def env_setting_errors(name: str, v: object) -> frozenset[type]:
    if name == "task_config":
        if v is None:
            return OK
        if not isinstance(v, Mapping):
            return V
        if any(k not in TaskConfig.field_names() for k in v):
            return T
        return OK if all(field_ok(k, x) for k, x in v.items()) else V
    ok = {
        "features": lambda: isinstance(v, str) and v in FEATURE_SETS,
        "action_mode": lambda: isinstance(v, str) and v in ACTION_MODES,
        "relative_factor": lambda: is_real(v) and 1 < number(v) < math.inf,
        "base_shape": lambda: isinstance(v, str) and v in BASE_SHAPES,
        "base_lr_spread": lambda: is_real(v) and 1 <= number(v) < math.inf,
        "reward": lambda: isinstance(v, str) and v in REWARD_FUNCTIONS,
        "divergence_penalty": lambda: is_real(v) and 0 < number(v) < math.inf,
        "target_loss": lambda: v is None or (is_real(v) and math.isfinite(number(v))),
        "dtype": lambda: isinstance(v, str) and v in ("float32", "float64"),
        "device": lambda: v is None or (isinstance(v, str) and re.fullmatch(r"auto|cpu(:0)?|cuda(:\d+)?", v) is not None),
    }[name]()
    return OK if ok else V


valid_env_settings = st.fixed_dictionaries(
    {},
    optional={
        "features": st.sampled_from(list(FEATURE_SETS)),
        "action_mode": st.sampled_from(ACTION_MODES),
        "relative_factor": st.floats(1.01, 10),
        "reward": st.sampled_from(list(REWARD_FUNCTIONS)),
        "divergence_penalty": st.floats(0.01, 10),
        "target_loss": st.one_of(st.none(), st.floats(0, 5)),
        "task_config": st.just({"epochs": 3, "batch_size": 64}),
        "dtype": st.sampled_from(["float32", "float64"]),
    },
)
env_settings = st.lists(
    st.sampled_from(EnvConfig.field_names()).flatmap(lambda f: st.tuples(st.just(f), ENV_VALUES[f])),
    max_size=3,
    unique_by=lambda kv: kv[0],
).map(dict)


@fuzz(300)
@given(settings_=env_settings)
def test_env_config_rejects_bad_settings(settings_):
    errors = frozenset().union(*(env_setting_errors(k, v) for k, v in settings_.items()))
    if errors:
        bad = [ENV_NAMES.get(k, (k,)) for k, v in settings_.items() if env_setting_errors(k, v)]
        raises(errors, lambda: EnvConfig(**settings_), *(n for names in bad for n in names))
        raises(frozenset({ValueError}), lambda: EnvConfig.from_dict(settings_, "config.json"), "config.json")
    else:
        event("accepted")
        config = EnvConfig(**settings_)
        assert EnvConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@fuzz(60)
@given(
    settings_=mostly(valid_env_settings, env_settings),
    seed=mostly(st.one_of(st.none(), st.integers(0, 2**31)), st.one_of(st.integers(-3, -1), ANYTHING)),
    render_mode=mostly(st.sampled_from([None, "ansi", "rgb_array"]), st.one_of(st.just("human"), ANYTHING)),
    unknown=mostly(st.just({}), st.just({"learning_rate": 0.1})),
)
def test_lrenv_settings_are_checked_on_construction(settings_, seed, render_mode, unknown):
    settings_ = {**settings_, "device": "cpu"}  # a CUDA device would be built here only on a GPU
    errors = set().union(*(env_setting_errors(k, v) for k, v in settings_.items()))
    if unknown:
        errors.add(TypeError)
    if not seed_ok(seed):
        errors.add(ValueError)
    if render_mode is not None and not (isinstance(render_mode, str) and render_mode in ("ansi", "rgb_array")):
        errors.add(ValueError)
    if not errors:
        task_config = settings_.get("task_config") or {}
        if config_problems(task_config, BASE):
            errors.add(ValueError)  # e.g. an lr_range that leaves out the task's default_lr
        target = settings_.get("target_loss")
        target = task_config.get("target_loss", BASE.target_loss) if target is None else target
        if settings_.get("reward") == "time_to_target" and target is None:
            errors.add(ValueError)
    build = lambda: LREnv(tiny_task(), seed=seed, render_mode=render_mode, **settings_, **unknown)  # noqa: E731
    if errors:
        raises(frozenset(errors), build)
        return
    event("accepted")
    env = build()
    obs, _ = env.reset()
    obs2, reward, *_ = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs) and env.observation_space.contains(obs2) and math.isfinite(reward)


@fuzz(40)
@given(
    task=st.one_of(st.integers(), st.none(), st.just([]), st.just({1.5}), st.floats(), st.just(TinyClassifier)),
    n_envs=st.one_of(st.integers(-1, 2), st.just(True), st.just(2.0), st.just("2"), st.just(np.int64(2))),
    seed=st.one_of(st.none(), st.integers(-2, 5), st.just(True), st.just("0"), st.just(1.0)),
    batched=st.one_of(st.none(), st.booleans(), st.just("yes"), st.just(1)),
)
def test_env_arguments_of_wrong_types(task, n_envs, seed, batched):
    raises(frozenset({TypeError, ValueError}), lambda: LREnv(task, device="cpu"), "task")
    errors = set()
    if not positive_int_ok(n_envs):
        errors.add(ValueError)
    if not seed_ok(seed):
        errors.add(ValueError)
    if batched is not None and not isinstance(batched, bool):
        errors.add(ValueError)
    if errors:
        raises(frozenset(errors), lambda: BatchedVecEnv(tiny_task(), n_envs, seed=seed, batched=batched, device="cpu"))
    else:
        venv = BatchedVecEnv(tiny_task(), n_envs, seed=seed, batched=batched, device="cpu")
        assert venv.num_envs == n_envs and np.all(np.isfinite(venv.reset()))


# -- register_task ---------------------------------------------------------------------------


class FactoryFailed(Exception):
    pass


def _raise(exc: BaseException):
    def factory():
        raise exc

    return factory


#: (factory, what register_task may raise, what make_task may raise afterwards)
FACTORIES = [
    (TinyClassifier, OK, OK),
    (lambda: TinyClassifier(), OK, OK),
    (lambda: "hello", OK, T),
    (lambda: None, OK, T),
    (lambda: TinyClassifier, OK, T),  # the class, not an instance
    (_raise(FactoryFailed("no data")), OK, V),
    (_raise(ZeroDivisionError("oops")), OK, V),
    (_raise(ImportError("install extra")), OK, V),
    (_raise(KeyError("k")), OK, V),
    (None, T, OK),
    (3, T, OK),
    ("TinyClassifier", T, OK),
    (TinyClassifier(), T, OK),  # an instance is no factory
]


@fuzz(150)
@given(
    name=mostly(st.text(max_size=6).map(lambda s: "Fuzz-" + s), st.sampled_from(["", "  ", None, 3, b"Tiny-v0", ("Tiny",)])),
    factory=st.sampled_from(FACTORIES),
    defaults=mostly(
        st.sampled_from([{}, {"epochs": 3}, {"lr_range": [1e-4, 1.0], "momentum": 0.5}]),
        st.one_of(task_overrides, st.sampled_from([{"lr": 0.1}, {"epochs": True}])),
    ),
    twice=st.booleans(),
)
def test_register_task_misuse_is_a_clear_error(name, factory, defaults, twice):
    factory, register_errors, make_errors = factory
    errors = set(register_errors)
    if not (isinstance(name, str) and name.strip()):
        errors.add(ValueError)
    if any(k not in TaskConfig.field_names() for k in defaults):
        errors.add(TypeError)
    elif any(not field_ok(k, v) for k, v in defaults.items()):
        errors.add(ValueError)
    if errors:
        raises(frozenset(errors), lambda: lrenv.register_task(name, factory, **defaults))
        return
    lrenv.register_task(name, factory, **defaults)
    try:
        if twice:
            raises(V, lambda: lrenv.register_task(name, TinyClassifier), "already registered")
        if make_errors:
            raises(make_errors, lambda: lrenv.make_task(name), repr(name), says_allowed=False)
        elif config_problems(defaults, BASE):
            raises(V, lambda: lrenv.make_task(name), *config_problems(defaults, BASE))
        else:
            event("accepted")
            task = lrenv.make_task(name)
            assert isinstance(task, lrenv.Task) and task.name == name
    finally:
        lrenv.unregister_task(name)
