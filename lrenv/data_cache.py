"""A small on-disk cache for the data sets tasks generate (``.npz``), safe under concurrency.

The cache directory is ``$LRENV_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/lrenv``, else
``~/.cache/lrenv``. Files are written to a temporary file in the same directory and then
renamed over the target (``os.replace`` is atomic), so concurrent processes and interrupted
runs never leave a half-written file; an unreadable file is regenerated. File names carry a
version: bump it when the generated content changes.
"""

from __future__ import annotations

import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

CACHE_ENV = "LRENV_CACHE_DIR"


def cache_dir() -> Path:
    """The directory where lrenv caches generated data (not created here)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lrenv"


def load_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays ``keys`` of an ``.npz`` file, or ``None`` if it is missing, unreadable or
    lacks one of them (a warning says so for a damaged file)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in keys}
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        warnings.warn(f"ignoring unreadable cache file {path} ({exc!r}); regenerating it", stacklevel=3)
        return None


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` as ``.npz`` atomically (temp file + ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a cache is readable like any other file
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def cached_arrays(
    filename: str, keys: tuple[str, ...], generate: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Arrays ``keys`` from ``cache_dir() / filename``, generated and written there on a miss.

    If the cache cannot be written (read-only home, full disk), the generated arrays are
    returned anyway, with a warning: the cache is an optimisation, never a requirement.
    """
    path = cache_dir() / filename
    arrays = load_npz(path, keys)
    if arrays is not None:
        return arrays
    arrays = {key: np.asarray(value) for key, value in generate().items() if key in keys}
    try:
        save_npz_atomic(path, arrays)
    except OSError as exc:
        warnings.warn(f"could not write the data cache {path} ({exc}); it will be regenerated next time", stacklevel=2)
    return arrays
