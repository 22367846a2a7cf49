"""Built-in inner tasks of lrenv, registered by name when this package is imported.

============================  ===============================================================
``NoisyQuadratic-v0``         noisy quadratic model, plain SGD; has an analytical optimal schedule
``MNIST1D-MLP-v0``            MLP 40-100-100-10 on MNIST-1D, SGD with momentum
``MNIST1D-CNN-v0``            small 1-D convnet on MNIST-1D, Adam
``Digits-MLP-v0``             MLP 64-64-10 on scikit-learn's 8x8 digits, SGD with momentum
``TextGRU-v1``                character-level GRU language model on shipped English text, Adam
``Friedman-MLP-v0``           tanh MLP regressing Friedman's function #1 (squared error), AdamW
============================  ===============================================================

Width variants of the training families, for training distributions (same data, optimizer
and budget; only the hidden width differs). They are not part of the evaluation's task set:

============================  ===============================================================
``MNIST1D-MLP-narrow-v0``     MLP 40-32-32-10: fits less, still improving at 20 epochs
``MNIST1D-MLP-wide-v0``       MLP 40-256-256-10: overfits sooner than the width-100 model
``Digits-MLP-wide-v0``        MLP 64-512-10
============================  ===============================================================

Importing registers and does nothing else: data are generated or read on the first
``task.data()`` call and cached in memory for the process (MNIST-1D also on disk, see
:mod:`lrenv.data_cache`). Nothing is ever downloaded.

Installed as ``lrenv.tasks`` (the folder sits at the top of the repository). It imports
``lrenv.task``, ``lrenv.registry`` and ``lrenv.data_cache`` only, never ``lrenv``'s public
API: ``lrenv/__init__.py`` imports this package at its end.
"""

from lrenv.tasks import digits, mnist1d, quadratic, regression, text  # noqa: F401  (each registers its tasks)

#: The built-in task names, in the order of the table above.
BUILTIN_TASKS = ("NoisyQuadratic-v0", "MNIST1D-MLP-v0", "MNIST1D-CNN-v0", "Digits-MLP-v0", "TextGRU-v1", "Friedman-MLP-v0")

#: Tasks policies may train on: SGD with momentum (or plain SGD) on MLPs and the noisy
#: quadratic; cheap and batchable, so RL can afford the many episodes it needs.
TRAIN_TASKS = ("NoisyQuadratic-v0", "MNIST1D-MLP-v0", "Digits-MLP-v0")
#: Tasks no policy trains on, where generalisation claims are made: other architectures
#: (convolutional, recurrent), another optimizer (Adam, LRs near 1e-3 instead of 0.1) and, for
#: the GRU, another data modality (text). MNIST1D-CNN-v0 shares its data with MNIST1D-MLP-v0:
#: it is held out in model and optimizer, not in data; TextGRU-v1 is held out in everything;
#: Friedman-MLP-v0 is a family of its own (regression, squared error, tanh, AdamW, 30 epochs).
HELDOUT_TASKS = ("MNIST1D-CNN-v0", "TextGRU-v1", "Friedman-MLP-v0")
#: Training families at other widths (the second table above): variants to train on, not tasks to evaluate.
WIDTH_VARIANTS = ("MNIST1D-MLP-narrow-v0", "MNIST1D-MLP-wide-v0", "Digits-MLP-wide-v0")

__all__ = ["BUILTIN_TASKS", "HELDOUT_TASKS", "TRAIN_TASKS", "WIDTH_VARIANTS", "digits", "mnist1d", "quadratic", "regression", "text"]
