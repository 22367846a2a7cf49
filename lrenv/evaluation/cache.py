"""The disk cache of finished populations, keyed by everything that determines their episodes.

A key covers the job (task, settings, slots, seeds, device) and the *code* of the data path:
every module the episode runner imports, followed through lrenv's imports, plus the built-in
tasks. The list is found by reading the import statements, so a new module on the data path
is covered as soon as something on the path imports it. Docstrings, comments and layout do
not count: editing documentation keeps the cache.

Entries are written to a temporary file and renamed into place, so a concurrent reader sees
a whole entry or none; a damaged entry is recomputed.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
from functools import cache
from pathlib import Path

import torch

from lrenv.engine import resolve_device
from lrenv.evaluation.protocol import Job
from lrenv.evaluation.runner import Episode

#: Bump when what a cached population holds changes.
CACHE_FORMAT = 2
#: Where the data path starts: the episode runner, and the built-in tasks it makes by name.
DATA_PATH_ROOTS = ("lrenv.evaluation.runner", "lrenv.tasks")
PACKAGE = "lrenv"


def default_cache_dir() -> Path:
    """``$LRENV_CACHE_DIR/evaluate`` (else ``$XDG_CACHE_HOME/lrenv/evaluate`` or ``~/.cache/lrenv/evaluate``)."""
    from lrenv.data_cache import cache_dir

    return Path(cache_dir()) / "evaluate"


def data_path_modules(roots: tuple[str, ...] = DATA_PATH_ROOTS) -> dict[str, Path]:
    """Module name -> source file of every lrenv module reachable from ``roots`` by imports.

    The package's own ``__init__`` is not followed (it re-exports everything, including the
    reporting code); a subpackage's ``__init__`` is, and leads on to what it imports.
    """
    found: dict[str, Path] = {}
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in found or name == PACKAGE:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # ``from module import name``: not a module
            continue
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        path = Path(spec.origin)
        found[name] = path
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        stack.extend(m for m in _imported_modules(path, package) if m == PACKAGE or m.startswith(PACKAGE + "."))
    return dict(sorted(found.items()))


def _imported_modules(path: Path, package: str) -> list[str]:
    """Every module (and ``module.name``, which may be a submodule) that ``path`` imports."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
            if base:
                names.append(base)
                names.extend(f"{base}.{alias.name}" for alias in node.names)
    return names


@cache
def source_digest() -> str:
    """A digest of the data path's code (see the module docstring); computed once per process."""
    digest = hashlib.sha256()
    for name, path in data_path_modules().items():
        digest.update(name.encode())
        digest.update(_code_of(path.read_text()))
    return digest.hexdigest()


def _code_of(source: str) -> bytes:
    """The syntax tree of ``source`` without docstrings, as bytes."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False).encode()


def job_key(job: Job) -> str | None:
    """A cache key of everything that determines a population's results; ``None`` if not cacheable."""
    if not isinstance(job.task, str) or any(s.policy.kind not in ("baseline", "fixed") for s in job.slots):
        return None  # custom task objects and learned policies: their code is not in the digest
    spec = {
        "format": CACHE_FORMAT,
        "source": source_digest(),
        "torch": torch.__version__,
        "task": job.task,
        "env": job.env.to_dict(),
        "device": resolve_device(job.env.device).type,
        "optimizer": job.optimizer,
        "slots": [[s.method, s.params, s.seed, s.role, s.policy.kind, s.policy.name, s.policy.lrs] for s in job.slots],
        "batched": job.batched,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


class EpisodeCache:
    """Finished populations on disk, one JSON file per job key under ``folder``."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def load(self, key: str | None) -> list[Episode] | None:
        """The episodes stored under ``key``, or ``None`` (no key, no entry, or a damaged one)."""
        if key is None or not self._path(key).exists():
            return None
        try:
            return [Episode(**e) for e in json.loads(self._path(key).read_text())]
        except (OSError, ValueError, TypeError):
            return None

    def store(self, key: str | None, episodes: list[Episode] | None) -> None:
        """Store ``episodes`` under ``key`` atomically (nothing without a key)."""
        if key is None or episodes is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps([e.to_dict() for e in episodes]))
        tmp.replace(path)
