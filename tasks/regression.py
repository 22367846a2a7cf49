"""``Friedman-MLP-v0``: a tanh MLP regressing Friedman's benchmark function #1 with AdamW.

A held-out family: no policy trains on it. Everything a policy could have learned a habit
from differs from the training tasks: the loss (squared error, not cross-entropy), the
activation (tanh), the optimizer (AdamW with weight decay) and the budget (30 epochs).

The data are scikit-learn's ``make_friedman1`` (generated, nothing is downloaded):
``y = 10 sin(pi x1 x2) + 20 (x3 - 0.5)^2 + 10 x4 + 5 x5 + noise`` with 10 inputs uniform in
[0, 1], five of which do not matter, and Gaussian noise of std 1.0; ``random_state=0``, 2,000
samples, fixed splits train 1,200, valid 400, test 400. Inputs are standardised with train
statistics, targets too (so a loss of 1 is the variance of y; the noise floor is about 0.04).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from lrenv.task import Split, Task, TaskConfig, TaskData
from lrenv.tasks._common import register, seeded_module, standardise

N_TRAIN, N_VALID, N_TEST = 1200, 400, 400


@functools.lru_cache(maxsize=1)
def load_data() -> TaskData:
    """The fixed splits (generated once per process)."""
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=N_TRAIN + N_VALID + N_TEST, n_features=10, noise=1.0, random_state=0)
    x, y = torch.from_numpy(x), torch.from_numpy(y).reshape(-1, 1)
    cut1, cut2 = N_TRAIN, N_TRAIN + N_VALID
    xs = standardise(x[:cut1], x[cut1:cut2], x[cut2:])
    ys = standardise(y[:cut1], y[cut1:cut2], y[cut2:])
    return TaskData(train=Split(xs[0], ys[0]), valid=Split(xs[1], ys[1]), test=Split(xs[2], ys[2]))


class FriedmanMLP(Task):
    """``Friedman-MLP-v0``: MLP 10-64-64-1 (tanh), mean squared error, AdamW (weight decay 0.01).

    Defaults: 30 epochs of batch 64 (19 steps per epoch), LRs ``1e-5 .. 0.3``, ``default_lr``
    3e-3. No metric besides the loss.
    """

    default_config = TaskConfig(
        epochs=30,
        batch_size=64,
        optimizer="adamw",
        lr_range=(1e-5, 0.3),
        default_lr=3e-3,
        momentum=0.9,
        weight_decay=0.01,
    )

    def data(self) -> TaskData:
        return load_data()

    def model(self, generator: torch.Generator) -> nn.Module:
        return seeded_module(lambda: nn.Sequential(nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)), generator)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(output, target)


register("Friedman-MLP-v0", FriedmanMLP)
