"""``TextGRU-v0``: a character-level GRU language model on shipped English text.

The text is ``tasks/data/pydoc_topics.txt`` (about 38 KB): six topics of Python's own
reference documentation (``pydoc_data.topics``: class, exceptions, execmodel, import,
naming, try), extracted once from Python 3.11.7 and shipped
with the package, PSF License (see ``tasks/data/README.md``). The task reads only that file,
never ``pydoc_data`` (which changes between Python versions). Its first line is an
attribution header and is not part of the corpus.

Vocabulary (97 ids): ``"\\n"`` is 0, printable ASCII ``" "..."~"`` are 1..95, anything else
(a few typographic quotes and dashes) is 96.

Samples: the id sequence is cut into non-overlapping windows of ``SEQ_LEN + 1`` = 65
characters; ``x = window[:-1]``, ``y = window[1:]`` (int64, ``(n, 64)``: next-character
prediction at every position). Split (fixed): the windows form consecutive blocks of 10;
in each block the first 8 windows are train, the 9th valid, the 10th test, so every split
samples the whole text: 465 / 58 / 58 windows.
"""

from __future__ import annotations

import functools
from importlib import resources

import torch
from torch import nn

from lrenv.task import ClassificationTask, Split, TaskConfig, TaskData

from tasks._common import register, seeded_module

DATA_FILE = "pydoc_topics.txt"
SEQ_LEN = 64
VOCAB_SIZE = 97
OTHER = VOCAB_SIZE - 1
BLOCK = 10  # windows per block: 8 train, 1 valid, 1 test


def read_text() -> str:
    """The shipped corpus, without its attribution header line."""
    raw = resources.files("tasks").joinpath("data", DATA_FILE).read_text(encoding="utf-8")
    header, _, body = raw.partition("\n")
    if not header.startswith("#"):  # pragma: no cover - guards against a replaced file
        raise ValueError(f"{DATA_FILE} must start with its attribution header line")
    return body


def encode(text: str) -> torch.Tensor:
    """Character ids (int64): newline 0, printable ASCII 1..95, anything else 96."""
    codes = torch.tensor([ord(c) for c in text], dtype=torch.int64)
    ids = torch.where((codes >= 32) & (codes <= 126), codes - 31, torch.full_like(codes, OTHER))
    return torch.where(codes == 10, torch.zeros_like(ids), ids)


def decode(ids: torch.Tensor) -> str:
    """Inverse of :func:`encode` (id 96 becomes ``"?"``)."""
    return "".join("\n" if i == 0 else "?" if i == OTHER else chr(i + 31) for i in ids.tolist())


@functools.lru_cache(maxsize=1)
def load_data() -> TaskData:
    """The text splits (built once per process from the shipped file)."""
    ids = encode(read_text())
    n_windows = len(ids) // (SEQ_LEN + 1)
    windows = ids[: n_windows * (SEQ_LEN + 1)].view(n_windows, SEQ_LEN + 1)
    position = torch.arange(n_windows) % BLOCK
    parts = {
        "train": windows[position < BLOCK - 2],
        "valid": windows[position == BLOCK - 2],
        "test": windows[position == BLOCK - 1],
    }
    splits = {k: Split(w[:, :-1].contiguous(), w[:, 1:].contiguous()) for k, w in parts.items()}
    return TaskData(**splits)


class _CharGRU(nn.Module):
    """Embedding (97 -> 32) -> one-layer GRU (batch_first) -> Linear to 97 logits per position."""

    def __init__(self, embed: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, embed)
        self.gru = nn.GRU(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, VOCAB_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.embed(x))
        return self.head(out)


class TextGRU(ClassificationTask):
    """``TextGRU-v0``: next-character prediction with a small GRU (embedding 32, hidden 64).

    Output logits ``(B, 64, 97)``; the loss is the cross-entropy averaged over every
    position (nats per character; divide by ln 2 for bits per character), the metric is
    next-character accuracy. The loss starts at ln 97 = 4.57.

    Defaults: Adam (beta1 0.9), 20 epochs of batch 64 (8 steps per epoch; an epoch costs
    about 0.4 s on one CPU thread, which is why the model and the text are small), LRs
    ``1e-4 .. 0.3`` (0.3 barely learns). ``default_lr`` 3e-3 ends near 1.91 (2.75 bits per
    char); 1e-2 near 1.47; 3e-2 reaches 1.42 at its best epoch, then gets worse.
    ``target_loss`` 1.5: reached by a well-scaled LR within the budget, not by the default.

    ``nn.GRU`` runs as one op per sequence and initialises from the global RNG when
    built normally (here it is built on the meta device and initialised from the generator).
    It has no ``vmap`` rule: on a CPU the engine trains a population of this task in a loop
    (3.5–3.7 run-epochs/s on one thread); on CUDA it stacks the runs through
    :class:`lrenv.stand_ins.UnrolledGRU`.
    """

    embed_dim = 32
    hidden_dim = 64

    default_config = TaskConfig(
        epochs=20,
        batch_size=64,
        optimizer="adam",
        lr_range=(1e-4, 0.3),
        default_lr=3e-3,
        momentum=0.9,
        target_loss=1.5,
    )

    def data(self, seed: int = 0) -> TaskData:
        """The fixed splits; ``seed`` is accepted for the contract and ignored."""
        return load_data()

    def model(self, generator: torch.Generator) -> nn.Module:
        return seeded_module(lambda: _CharGRU(self.embed_dim, self.hidden_dim), generator)


register("TextGRU-v0", TextGRU)
