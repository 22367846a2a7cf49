"""The built-in tasks (package ``tasks``): contract, data, seeded models, learning, caches, NQM maths.

MNIST-1D is generated once per test module into a temporary cache directory (about 8 s),
so the generator, its disk cache and its RNG hygiene are exercised on every run.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import subprocess
import sys
import time
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lrenv import data_cache, tasks
from lrenv.registry import list_tasks, make_task
from lrenv.task import Split, Task, TaskConfig, TaskData
from lrenv.tasks import _common, digits, mnist1d, quadratic, text

torch.set_num_threads(1)

BUILTIN = ["Digits-MLP-v0", "MNIST1D-CNN-v0", "MNIST1D-MLP-v0", "NoisyQuadratic-v0", "TextGRU-v1"]

#: (train, valid, test) sizes and the shape of one input, as documented in each module.
SIZES = {
    "Digits-MLP-v0": ((1197, 300, 300), (64,)),
    "MNIST1D-CNN-v0": ((4000, 500, 500), (40,)),
    "MNIST1D-MLP-v0": ((4000, 500, 500), (40,)),
    "NoisyQuadratic-v0": ((4096, 1, None), (100,)),
    "TextGRU-v1": ((521, 172, 172), (16,)),
}


@pytest.fixture(scope="module", autouse=True)
def fresh_mnist1d(tmp_path_factory):
    """Generate MNIST-1D into an empty cache directory, watching Python's and NumPy's RNGs."""
    cache = tmp_path_factory.mktemp("lrenv-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(data_cache.CACHE_ENV, str(cache))
        mnist1d.load_data.cache_clear()
        random.seed(123)
        np.random.seed(456)
        py_state, np_state = random.getstate(), np.random.get_state()
        data = mnist1d.load_data()
        rng_kept = random.getstate() == py_state and all(
            np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state)
        )
        yield SimpleNamespace(cache=cache, data=data, rng_kept=rng_kept)
    mnist1d.load_data.cache_clear()


def _epoch(task: Task, model: torch.nn.Module, opt: torch.optim.Optimizer, data: TaskData, order: torch.Generator):
    x, y = data.train.x, data.train.y
    model.train()
    for idx in torch.randperm(len(x), generator=order).split(task.config.batch_size):
        loss = task.loss(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@torch.no_grad()
def _valid_loss(task: Task, model: torch.nn.Module, data: TaskData) -> float:
    model.eval()
    return float(task.loss(model(data.valid.x), data.valid.y))


def _optimizer(task: Task, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    c = task.config
    params = list(model.parameters())
    if c.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=c.weight_decay)
    if c.optimizer == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=c.momentum, weight_decay=c.weight_decay)
    cls = torch.optim.Adam if c.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=(c.momentum, 0.999), weight_decay=c.weight_decay)


def train_run(task: Task, lrs: list[float], seed: int = 0) -> list[float]:
    """A plain loop: validation loss before training and after each epoch at ``lrs[i]``."""
    data = task.data()
    model = task.model(torch.Generator().manual_seed(seed))
    opt = _optimizer(task, model, lrs[0])
    order = torch.Generator().manual_seed(10_000 + seed)
    losses = [_valid_loss(task, model, data)]
    for lr in lrs:
        for group in opt.param_groups:
            group["lr"] = lr
        _epoch(task, model, opt, data, order)
        losses.append(_valid_loss(task, model, data))
    return losses


# -- registration and import ------------------------------------------------------------------


def test_builtin_tasks_are_registered_with_sane_defaults():
    assert set(BUILTIN) <= set(list_tasks())
    for name in BUILTIN:
        task = make_task(name)
        assert task.name == name
        config = task.config
        assert isinstance(config, TaskConfig) and config.target_loss is not None and config.target_loss > 0
        low, high = config.lr_range
        assert low < config.default_lr < high and high / low >= 1e3


def test_registering_the_same_class_again_is_harmless_and_a_clash_is_an_error():
    _common.register("NoisyQuadratic-v0", quadratic.NoisyQuadratic)  # a second import does this
    assert list_tasks().count("NoisyQuadratic-v0") == 1
    with pytest.raises(ValueError, match="already registered"):
        _common.register("NoisyQuadratic-v0", digits.DigitsMLP)


def test_import_registers_and_does_nothing_else():
    code = (
        "import sys, threading\nimport lrenv.tasks as tasks\n"
        "from lrenv.registry import list_tasks\n"
        "heavy = [m for m in ('mnist1d', 'sklearn', 'pydoc_data') if m in sys.modules]\n"
        "cached = [m.__name__ for m in (tasks.digits, tasks.mnist1d, tasks.quadratic, tasks.text)"
        " if m.load_data.cache_info().currsize]\n"
        "print(len(list_tasks()), heavy, cached, threading.active_count())\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    count, rest = out.stdout.split(" ", 1)
    assert int(count) >= len(BUILTIN)
    assert rest.strip() == "[] [] 1", out.stdout


# -- the contract, for every task --------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN)
def test_data_shapes_dtypes_and_fixed_splits(name):
    task = make_task(name)
    data = task.data()
    assert isinstance(data, TaskData)
    (n_train, n_valid, n_test), shape = SIZES[name]
    assert len(data.train) == n_train and len(data.valid) == n_valid
    assert (data.test is None) == (n_test is None)
    if n_test is not None:
        assert len(data.test) == n_test
    for split in (data.train, data.valid, data.test):
        if split is None:
            continue
        assert isinstance(split, Split) and split.x.device.type == "cpu"
        assert tuple(split.x.shape[1:]) == shape
        if name == "TextGRU-v1":
            assert split.x.dtype == torch.int64
        else:
            assert split.x.dtype == torch.float32 and torch.isfinite(split.x).all()
        if name == "NoisyQuadratic-v0":
            assert split.y.dtype == torch.float32
        else:
            assert split.y.dtype == torch.int64
    # cached per process and independent of the seed
    assert task.data() is data and make_task(name).data() is data


def test_mnist1d_splits_are_disjoint_and_standardised(fresh_mnist1d):
    data = fresh_mnist1d.data
    rows = torch.cat([data.train.x, data.valid.x, data.test.x])
    assert len(torch.unique(rows, dim=0)) == len(rows)  # continuous noise: no sample repeats
    assert torch.allclose(data.train.x.mean(0), torch.zeros(40), atol=1e-5)
    assert torch.allclose(data.train.x.std(0), torch.ones(40), atol=1e-4)
    assert set(data.train.y.unique().tolist()) == set(range(10))


def test_mnist1d_as_trained_on_is_the_canonical_data_set(fresh_mnist1d):
    # Digests of the float32 splits built by this module's own split and standardisation from
    # mnist1d_data.pkl, the data set published in the mnist1d repository. The float64 arrays that
    # make_dataset generates differ from it in the last bit for about a third of the values
    # (numpy/scipy builds); the float32 standardisation absorbs that here. A failure means this
    # environment trains on other MNIST-1D data: its numbers do not compare with the README's.
    def digest(t):
        return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]

    data = fresh_mnist1d.data
    assert {s: (digest(getattr(data, s).x), digest(getattr(data, s).y)) for s in ("train", "valid", "test")} == {
        "train": ("5f110c78d33d1757", "d97dc7aecec8ad6b"),
        "valid": ("ba5bba312a1e351b", "1c8b9dc2f5215a70"),
        "test": ("a79ca6f3b307e111", "b2c7b8d380210f57"),
    }


def test_digits_splits_partition_the_data_set():
    from sklearn.datasets import load_digits

    data = digits.load_data()
    y_all = load_digits().target
    y = torch.cat([data.train.y, data.valid.y, data.test.y]).numpy()
    assert len(y) == len(y_all) and np.array_equal(np.bincount(y), np.bincount(y_all))
    seen = data.train.x.std(0) > 0.5  # pixels that vary in train are standardised
    assert torch.allclose(data.train.x.std(0)[seen], torch.ones(int(seen.sum())), atol=1e-4)


def test_text_splits_tile_the_shipped_text():
    data = text.load_data()
    window = text.SEQ_LEN + 1
    assert torch.equal(data.train.x[:, 1:], data.train.y[:, :-1])
    ids = text.encode(text.read_text())
    n = len(ids) // window
    windows = ids[: n * window].view(n, window)
    block = torch.arange(n) % text.BLOCK
    assert torch.equal(windows[block < 6][:, :-1], data.train.x)
    assert torch.equal(windows[(block == 6) | (block == 7)][:, 1:], data.valid.y)
    assert torch.equal(windows[block >= 8][:, 1:], data.test.y)
    assert int(ids.min()) >= 0 and int(ids.max()) < text.VOCAB_SIZE == 32
    assert text.read_text().startswith("Class definitions") and text.read_text().endswith("compiled.\n")
    assert text.decode(text.encode("Hello,\tWorld (3.11) ~")) == "hello, world (0.00( *"
    assert torch.equal(text.encode(text.decode(torch.arange(32))), torch.arange(32))


@pytest.mark.parametrize("name", BUILTIN)
def test_model_init_comes_from_the_generator_only(name):
    task = make_task(name)

    def weights(seed: int) -> list[torch.Tensor]:
        return [p.detach().clone() for p in task.model(torch.Generator().manual_seed(seed)).parameters()]

    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = weights(1)
    assert torch.equal(torch.get_rng_state(), before), "model(generator) touched the global torch RNG"
    torch.manual_seed(99)
    b, c = weights(1), weights(2)
    assert a and all(p.dtype == torch.float32 for p in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("name", BUILTIN)
def test_loss_and_metrics_on_a_batch(name):
    task = make_task(name)
    data = task.data()
    model = task.model(torch.Generator().manual_seed(0))
    x, y = data.train.x[:16], data.train.y[:16]
    out = model(x)
    loss = task.loss(out, y)
    assert loss.dim() == 0 and math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    metrics = task.metrics(out.detach(), y)
    if name == "NoisyQuadratic-v0":
        assert metrics == {}
    else:
        assert set(metrics) == {"accuracy"} and 0 <= metrics["accuracy"].item() <= 1
    # the engine may run in float64: model and loss follow the dtype
    model64 = task.model(torch.Generator().manual_seed(0)).to(torch.float64)
    batch64 = Split(x, y).to("cpu", torch.float64)
    assert task.loss(model64(batch64.x), batch64.y).dtype == torch.float64


@pytest.mark.parametrize("name", BUILTIN)
def test_a_few_epochs_at_default_lr_lower_the_validation_loss(name):
    task = make_task(name)
    epochs = 3
    losses = train_run(task, [task.config.default_lr] * epochs)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.9 * losses[0], losses


# -- caches -----------------------------------------------------------------------------------


def test_mnist1d_restores_global_rngs_and_reuses_its_disk_cache(fresh_mnist1d, monkeypatch):
    assert fresh_mnist1d.rng_kept
    path = fresh_mnist1d.cache / mnist1d.CACHE_FILE
    assert path.is_file() and not [p for p in fresh_mnist1d.cache.iterdir() if p.name != mnist1d.CACHE_FILE]
    assert mnist1d.load_data() is fresh_mnist1d.data  # in-memory cache

    def no_generation():
        raise AssertionError("MNIST-1D was generated again although its cache file exists")

    monkeypatch.setattr(mnist1d, "generate_arrays", no_generation)
    mnist1d.load_data.cache_clear()
    try:
        start = time.perf_counter()
        again = mnist1d.load_data()
        assert time.perf_counter() - start < 5.0  # a file read, not a generation (~8 s)
    finally:
        mnist1d.load_data.cache_clear()
    for name in ("train", "valid", "test"):
        old, new = getattr(fresh_mnist1d.data, name), getattr(again, name)
        assert torch.equal(old.x, new.x) and torch.equal(old.y, new.y)


def test_cached_arrays_writes_once_and_regenerates_a_damaged_file(tmp_path, monkeypatch):
    monkeypatch.setenv(data_cache.CACHE_ENV, str(tmp_path / "sub"))
    calls = []

    def generate():
        calls.append(1)
        return {"a": np.arange(5.0), "b": np.ones((2, 3), dtype=np.int64), "unused": np.zeros(1)}

    first = data_cache.cached_arrays("demo-v1.npz", ("a", "b"), generate)
    second = data_cache.cached_arrays("demo-v1.npz", ("a", "b"), generate)
    assert len(calls) == 1
    assert np.array_equal(first["a"], second["a"]) and np.array_equal(first["b"], second["b"])
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["demo-v1.npz"]  # no temp files left
    (tmp_path / "sub" / "demo-v1.npz").write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable cache file"):
        third = data_cache.cached_arrays("demo-v1.npz", ("a", "b"), generate)
    assert len(calls) == 2 and np.array_equal(third["a"], first["a"])
    assert data_cache.load_npz(tmp_path / "sub" / "demo-v1.npz", ("a", "b")) is not None


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(data_cache.CACHE_ENV, str(tmp_path / "x"))
    assert data_cache.cache_dir() == tmp_path / "x"
    monkeypatch.delenv(data_cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_cache.cache_dir() == tmp_path / "xdg" / "lrenv"


def test_an_unwritable_cache_warns_and_still_returns_the_data(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv(data_cache.CACHE_ENV, str(blocker / "cache"))
    with pytest.warns(UserWarning, match="could not write"):
        arrays = data_cache.cached_arrays("demo-v1.npz", ("a",), lambda: {"a": np.arange(3)})
    assert arrays["a"].tolist() == [0, 1, 2]


# -- the noisy quadratic model -----------------------------------------------------------------


@pytest.fixture(scope="module")
def nqm() -> quadratic.NoisyQuadratic:
    return make_task("NoisyQuadratic-v0")


def test_nqm_data_are_moment_matched_and_the_loss_is_the_nqm(nqm):
    data = nqm.data()
    h = quadratic.curvatures()
    c = data.train.x.double()
    assert torch.equal(data.train.y, h.sqrt().float().expand(4096, 100)) and torch.equal(data.valid.y[0], data.train.y[0])
    assert torch.allclose(c.mean(0), torch.zeros(100, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(c.var(0, correction=0) * h, torch.ones(100, dtype=torch.float64), rtol=1e-5)
    model = nqm.model(torch.Generator().manual_seed(3))
    theta = model.theta.detach().double()
    assert torch.equal(theta.abs(), torch.ones(100, dtype=torch.float64))
    with torch.no_grad():
        valid = float(nqm.loss(model(data.valid.x), data.valid.y))
        train = float(nqm.loss(model(data.train.x[:32]), data.train.y[:32]))
    assert valid == pytest.approx(nqm.initial_loss, rel=1e-6) and valid == pytest.approx(0.5 * float(h.sum()), rel=1e-6)
    batch = data.train.x[:32]
    expected = 0.5 * (h * (theta - batch.double()).square()).sum(1).mean()
    assert train == pytest.approx(float(expected), rel=1e-5)


def test_nqm_expected_losses_match_a_step_by_step_recursion_with_replacement(nqm):
    h = quadratic.curvatures()
    lrs = [1.5, 0.4, 0.05, 2.2]
    m = torch.ones_like(h)
    want = []
    for lr in lrs:
        for _ in range(nqm.steps_per_epoch):
            m = (1 - lr * h) ** 2 * m + lr**2 * h / nqm.config.batch_size
        want.append(float(0.5 * (h * m).sum()))
    assert nqm.expected_losses(lrs, sampling="replacement") == pytest.approx(want, rel=1e-10)
    assert nqm.expected_losses([]) == []
    with pytest.raises(ValueError):
        nqm.expected_losses([0.1, float("nan")])
    with pytest.raises(ValueError):
        nqm.expected_losses([0.1], sampling="bootstrap")


@pytest.mark.parametrize(
    "batch_size, lrs, noisier",
    [
        (128, [2.0, 2.0, 2.0, 1.0, 0.5, 0.25, 0.12, 0.06, 0.03], 3.0),
        (1000, [1.9, 0.3, 0.05], 1.0),  # 1000 does not divide 4096: a smaller last batch
    ],
)
def test_nqm_actual_runs_match_the_expected_losses(nqm, batch_size, lrs, noisier):
    task = make_task(nqm, batch_size=batch_size)
    finals = [train_run(task, lrs, seed)[-1] for seed in range(6)]
    expected = np.array(task.expected_losses(lrs))
    # (at lr 2 the sharpest coordinate is marginally stable: its loss is a wide random walk,
    # so only the final, decayed epoch is compared on 6 seeds)
    assert np.mean(finals) == pytest.approx(expected[-1], rel=0.2), (finals, expected)
    # the classic with-replacement NQM overstates the noise of shuffled epochs at small LRs
    replacement = np.array(task.expected_losses(lrs, sampling="replacement"))
    assert replacement[-1] > noisier * expected[-1]


def test_nqm_optimal_schedule_beats_constant_and_cosine(nqm):
    schedule = nqm.optimal_schedule()
    config = nqm.config
    assert len(schedule) == config.epochs and all(config.lr_range[0] <= v <= 2.0 for v in schedule)
    assert schedule == nqm.optimal_schedule()  # deterministic (and cached)
    best = nqm.expected_losses(schedule)[-1]
    grid = np.geomspace(config.lr_range[0], quadratic.stable_lr_limit(), 60)
    constant = min(nqm.expected_losses([lr] * config.epochs)[-1] for lr in grid)
    progress = np.arange(config.epochs) / config.epochs
    cosine = min(
        nqm.expected_losses(list(np.maximum(peak * 0.5 * (1 + np.cos(np.pi * progress)), config.lr_range[0])))[-1]
        for peak in grid
    )
    assert best < 0.9 * cosine < 0.9 * constant
    assert best < config.target_loss < constant  # the target separates schedules from constants
    assert nqm.expected_losses(schedule)[-1] < 1e-3 * nqm.initial_loss


def test_nqm_optimal_schedule_needs_plain_sgd(nqm):
    with pytest.raises(ValueError, match="plain SGD"):
        make_task(nqm, optimizer="momentum").optimal_schedule()
    with pytest.raises(ValueError, match="plain SGD"):
        make_task(nqm, weight_decay=1e-4).optimal_schedule()


def test_nqm_top_of_the_lr_range_diverges(nqm):
    losses = train_run(nqm, [nqm.config.lr_range[1]])
    assert not math.isfinite(losses[-1]) or losses[-1] > nqm.config.divergence_factor * losses[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nqm.expected_losses([nqm.config.lr_range[1]])[-1] > 1e10


def test_package_docstring_lists_every_builtin_task():
    for name in BUILTIN:
        assert name in tasks.__doc__
