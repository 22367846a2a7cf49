"""``Digits-MLP-v0``: an MLP on scikit-learn's 8x8 handwritten digits.

The data ship inside scikit-learn (``sklearn.datasets.load_digits``: 1,797 images of 64
pixels, 10 classes); nothing is downloaded. Pixels are scaled to ``[0, 1]`` (divided by 16),
then standardised per feature with train statistics (pixels constant in train keep scale 1).

Splits (fixed; a ``numpy.random.RandomState(0)`` permutation of the 1,797 images, not
stratified, independent of any run seed): train 1,197, valid 300, test 300.
Inputs float32 ``(n, 64)``, targets int64 ``0..9``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from lrenv.task import ClassificationTask, Split, TaskConfig, TaskData
from lrenv.tasks._common import register, seeded_module, standardise

N_TRAIN, N_VALID = 1197, 300


@functools.lru_cache(maxsize=1)
def load_data() -> TaskData:
    """The digits splits (loaded once per process; scikit-learn reads a file it ships)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.RandomState(0).permutation(len(y))
    x = torch.from_numpy(x[order] / 16.0)
    y = torch.from_numpy(y[order]).long()
    cut1, cut2 = N_TRAIN, N_TRAIN + N_VALID
    x_train, x_valid, x_test = standardise(x[:cut1], x[cut1:cut2], x[cut2:])
    return TaskData(
        train=Split(x_train, y[:cut1].contiguous()),
        valid=Split(x_valid, y[cut1:cut2].contiguous()),
        test=Split(x_test, y[cut2:].contiguous()),
    )


class DigitsMLP(ClassificationTask):
    """``Digits-MLP-v0``: MLP 64-64-10 (ReLU), SGD with momentum 0.9.

    An easy task (about 98 % validation accuracy): what a schedule must get right here is
    the LR's scale. Defaults: 20 epochs of batch 64 (19 steps per epoch), LRs ``1e-3 .. 3``
    (0.3 is already unstable). ``default_lr`` 0.03 ends near 0.076 validation loss; 0.1
    reaches 0.065, 0.01 only 0.12. ``target_loss`` 0.1: the default passes it around epoch
    10, a well-scaled LR within 5 epochs, a too small one (0.01) not within the budget.
    Validation has 300 images: seed-to-seed spread of the final loss is about 10 %.
    """

    default_config = TaskConfig(
        epochs=20,
        batch_size=64,
        optimizer="momentum",
        lr_range=(1e-3, 3.0),
        default_lr=0.03,
        momentum=0.9,
        target_loss=0.1,
    )

    def data(self) -> TaskData:
        """The fixed splits; ``seed`` is accepted for the contract and ignored."""
        return load_data()

    #: Units of the hidden layer (the width variant below changes only this).
    hidden = 64

    def model(self, generator: torch.Generator) -> nn.Module:
        h = self.hidden
        return seeded_module(lambda: nn.Sequential(nn.Linear(64, h), nn.ReLU(), nn.Linear(h, 10)), generator)


class DigitsMLPWide(DigitsMLP):
    """``Digits-MLP-wide-v0``: ``Digits-MLP-v0`` at width 512 (64-512-10), a training variant.

    Same data, optimizer and budget; eight times the hidden units of the base model.
    """

    hidden = 512


register("Digits-MLP-v0", DigitsMLP)
register("Digits-MLP-wide-v0", DigitsMLPWide)
