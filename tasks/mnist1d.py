"""MNIST-1D tasks: ``MNIST1D-MLP-v0`` and ``MNIST1D-CNN-v0``.

MNIST-1D (Greydanus, 2020) is a 10-class problem on 40-sample 1-D signals, small
enough to train in a fraction of a second per epoch on one CPU thread, hard enough that
models differ and overfit. The data are generated offline with the ``mnist1d`` package
(``make_dataset(get_dataset_args())``, its default arguments and seed 42; never
``get_dataset``, which downloads) and cached as ``mnist1d-v1.npz`` in the lrenv cache
directory (see :mod:`lrenv.data_cache`).

Splits (fixed; they do not depend on any seed): train = the generator's 4,000 ``x``;
valid = the first 500 of its ``x_test``; test = the last 500 of ``x_test``.

Inputs are float32 ``(n, 40)``, standardised per feature with train statistics; targets
are int64 class ids in ``0..9``. The CNN sees the same inputs (it adds the channel axis).
"""

from __future__ import annotations

import functools
import random

import numpy as np
import torch
from torch import nn

from lrenv.data_cache import cached_arrays
from lrenv.task import ClassificationTask, Split, TaskConfig, TaskData
from lrenv.tasks._common import register, seeded_module, standardise

#: Cache file; bump the version when the generator's arguments or the stored arrays change.
CACHE_FILE = "mnist1d-v1.npz"
_KEYS = ("x", "y", "x_test", "y_test")
N_VALID = 500


def generate_arrays() -> dict[str, np.ndarray]:
    """Generate MNIST-1D with the ``mnist1d`` package, offline (about 5 s plus a 3 s import).

    ``make_dataset`` re-seeds Python's ``random`` and NumPy's global RNG; both states are
    restored afterwards, so callers' random streams are untouched.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        from mnist1d.data import get_dataset_args, make_dataset

        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {key: np.asarray(data[key]) for key in _KEYS}


@functools.lru_cache(maxsize=1)
def load_data() -> TaskData:
    """The MNIST-1D splits (cached in memory per process, and on disk across processes)."""
    arrays = cached_arrays(CACHE_FILE, _KEYS, generate_arrays)
    x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"]).long()
    x_test, y_test = torch.from_numpy(arrays["x_test"]), torch.from_numpy(arrays["y_test"]).long()
    x, x_valid, x_rest = standardise(x, x_test[:N_VALID], x_test[N_VALID:])
    return TaskData(
        train=Split(x, y.contiguous()),
        valid=Split(x_valid, y_test[:N_VALID].contiguous()),
        test=Split(x_rest, y_test[N_VALID:].contiguous()),
    )


class _MNIST1DTask(ClassificationTask):
    def data(self) -> TaskData:
        """The fixed splits; ``seed`` is accepted for the contract and ignored."""
        return load_data()


class MNIST1DMLP(_MNIST1DTask):
    """``MNIST1D-MLP-v0``: MLP 40-100-100-10 (ReLU), SGD with momentum 0.9.

    Defaults: 20 epochs of batch 128 (32 steps per epoch), ``default_lr`` 0.1 (the
    common "default constant"; tuned constants are near it), LRs ``1e-3 .. 3`` (from 1
    up it does not learn). The model overfits after about 8 epochs at the default: it ends
    near 1.20 validation loss (1.05 at its best epoch); a cosine decay from 0.1 ends near
    0.995 (0.98 at best), tuned step decays near 0.94. ``target_loss`` 1.0: reached by a
    decaying schedule, not by the default constant.
    """

    default_config = TaskConfig(
        epochs=20,
        batch_size=128,
        optimizer="momentum",
        lr_range=(1e-3, 3.0),
        default_lr=0.1,
        momentum=0.9,
        target_loss=1.0,
    )

    #: Units of each hidden layer (the width variants below change only this).
    hidden = 100

    def model(self, generator: torch.Generator) -> nn.Module:
        h = self.hidden
        return seeded_module(lambda: nn.Sequential(nn.Linear(40, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 10)), generator)


class MNIST1DMLPNarrow(MNIST1DMLP):
    """``MNIST1D-MLP-narrow-v0``: ``MNIST1D-MLP-v0`` at width 32 (40-32-32-10), a training variant.

    Same data, optimizer and budget. Fewer units overfit later and fit less: a schedule
    can hold a large LR longer than on the width-100 model.
    """

    hidden = 32


class MNIST1DMLPWide(MNIST1DMLP):
    """``MNIST1D-MLP-wide-v0``: ``MNIST1D-MLP-v0`` at width 256 (40-256-256-10), a training variant.

    Same data, optimizer and budget. It overfits sooner than the width-100 model: its
    validation loss turns up within a few epochs at the default LR.
    """

    hidden = 256


def _conv_net() -> nn.Sequential:
    """Conv1d 1->16 (k5, s2) -> ReLU -> Conv1d 16->32 (k5, s2) -> ReLU -> Linear 320->10.

    A plain Sequential (the channel axis added by ``Unflatten``), so the engine trains a
    population of it through its hand-written stacked backward.
    """
    return nn.Sequential(
        nn.Unflatten(1, (1, 40)),
        nn.Conv1d(1, 16, kernel_size=5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv1d(16, 32, kernel_size=5, stride=2, padding=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 10, 10),
    )


class MNIST1DCNN(_MNIST1DTask):
    """``MNIST1D-CNN-v0``: a small 1-D convnet (two strided convolutions, one linear head), Adam.

    Inputs ``(n, 40)``; the model adds the channel axis itself, so it shares the MLP's data.
    It beats the MLP clearly once its LR is right. Defaults: 20 epochs of batch 128, Adam
    (beta1 0.9), LRs ``1e-5 .. 0.1`` (0.1 barely learns). ``default_lr`` 1e-3 (Adam's usual
    default) is slow here: it ends near 0.99 validation loss, 3e-3 near 0.61, 1e-2 near 0.49
    (0.45 at its best epoch). ``target_loss`` 0.5: reached by a well-scaled LR within the
    budget, not by the default.
    """

    default_config = TaskConfig(
        epochs=20,
        batch_size=128,
        optimizer="adam",
        lr_range=(1e-5, 1e-1),
        default_lr=1e-3,
        momentum=0.9,
        target_loss=0.5,
    )

    def model(self, generator: torch.Generator) -> nn.Module:
        return seeded_module(_conv_net, generator)


register("MNIST1D-MLP-v0", MNIST1DMLP)
register("MNIST1D-CNN-v0", MNIST1DCNN)
register("MNIST1D-MLP-narrow-v0", MNIST1DMLPNarrow)
register("MNIST1D-MLP-wide-v0", MNIST1DMLPWide)
