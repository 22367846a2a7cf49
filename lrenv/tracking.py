"""Weights & Biases tracking for training runs, robust to having no account or no network.

:func:`start_wandb` opens a W&B run that never costs the training run: it runs offline
unless the user is logged in (an API key in ``WANDB_API_KEY`` or ``~/.netrc``) or asks for a
mode with ``WANDB_MODE``; when the W&B server cannot be reached it warns and falls back to
offline within seconds (``wandb.init`` alone would block for its 90 s ``init_timeout``).
An offline run is synced later with ``wandb sync <run folder>/wandb/offline-run-*``.

:class:`Tracker` wraps the run: metrics are logged against ``global_step`` (the agent's
timesteps) through ``define_metric``, so SB3's logger, episode callbacks and evaluation can
all log without fighting over W&B's own step counter. :meth:`Tracker.sb3_output` plugs SB3's
logger into W&B directly (no tensorboard needed).

``wandb`` is imported only inside these functions: ``import lrenv`` never imports it.
Install it with ``pip install "lrenv[wandb]"``.
"""

from __future__ import annotations

import http.client
import netrc
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from stable_baselines3.common.logger import KVWriter

DEFAULT_BASE_URL = "https://api.wandb.ai"
STEP_METRIC = "global_step"
# key prefixes that are plotted against global_step (SB3's logger sections and ours)
METRIC_PREFIXES = ("rollout", "train", "time", "episode", "eval", "checkpoint")


class TrackingWarning(UserWarning):
    """W&B could not do what was asked; training went on without it (or offline)."""


def _base_url() -> str:
    return os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)


def has_api_key() -> bool:
    """Whether the user is logged in to W&B: an API key in the environment or ``~/.netrc``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(_base_url()).hostname or ""
    try:
        path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
        return Path(path).is_file() and netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def server_reachable(timeout: float = 3.0) -> bool:
    """Whether the W&B server (``WANDB_BASE_URL``) answers an HTTP request within ``timeout`` s.

    Any answer counts (even an error status): what matters is that requests come back. A
    host that accepts connections but never answers would otherwise hold ``wandb.init``
    for its own timeouts and retries (about 30 s measured with ``init_timeout=15``).
    """
    parts = urlsplit(_base_url())
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname or "", parts.port, timeout=timeout)
    try:
        connection.request("HEAD", "/")
        connection.getresponse()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def choose_mode() -> str:
    """``WANDB_MODE`` if set, else ``"online"`` when logged in, else ``"offline"``."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    return "online" if has_api_key() else "offline"


class Tracker:
    """A W&B run plus the bookkeeping lrenv needs (see the module doc)."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self._pending: list[dict[str, Any]] | None = None
        run.define_metric(STEP_METRIC)
        for prefix in METRIC_PREFIXES:
            run.define_metric(f"{prefix}/*", step_metric=STEP_METRIC)

    @property
    def mode(self) -> str:
        return str(self.run.settings.mode)

    @property
    def id(self) -> str:
        return self.run.id

    @property
    def folder(self) -> Path:
        """The run's local folder (``.../wandb/offline-run-*`` or ``.../wandb/run-*``)."""
        return Path(self.run.dir).parent

    def log(self, values: dict[str, Any], step: int) -> None:
        """Log ``values`` at agent timestep ``step`` (kept until :meth:`commit` while holding)."""
        record = {**values, STEP_METRIC: int(step)}
        if self._pending is None:
            self.run.log(record)
        else:
            self._pending.append(record)

    def hold(self) -> None:
        """Keep what is logged from now on until :meth:`commit`.

        Training commits at each checkpoint: a run killed between two checkpoints has sent
        nothing that its resumed run, which restarts from the last checkpoint, logs again.
        """
        if self._pending is None:
            self._pending = []

    def commit(self) -> None:
        """Send what was kept while holding (and go on holding)."""
        if self._pending:
            pending, self._pending = self._pending, []
            for record in pending:
                self.run.log(record)

    def summary(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self.run.summary[key] = value

    def table(self, key: str, columns: list[str], rows: Iterable[list[Any]], step: int) -> None:
        import wandb

        self.log({key: wandb.Table(columns=columns, data=[list(r) for r in rows])}, step)

    def image(self, key: str, path: str | Path, step: int) -> None:
        import wandb

        self.log({key: wandb.Image(str(path))}, step)

    def log_artifact(self, name: str, kind: str, files: Iterable[str | Path], metadata: dict[str, Any] | None = None) -> None:
        """Upload (or, offline, stage) files as one artifact; missing files are skipped."""
        import wandb

        artifact = wandb.Artifact(_artifact_name(name), type=kind, metadata=metadata or {})
        for f in files:
            if Path(f).is_file():
                artifact.add_file(str(f))
        self.run.log_artifact(artifact)

    def sb3_output(self) -> KVWriter:
        """An SB3 logger output format that sends the logger's values to this run."""
        return _WandbWriter(self)

    def finish(self, exit_code: int = 0) -> None:
        """Commit what is held and close the run."""
        try:
            self.commit()
            self.run.finish(exit_code=exit_code)
        except Exception as exc:  # a failing upload must not turn a finished training into a failure
            warnings.warn(f"W&B: finishing the run failed ({exc}); its files are in {self.folder}", TrackingWarning, stacklevel=2)


class _WandbWriter(KVWriter):
    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        values = {}
        for key, value in key_values.items():
            excluded = key_excluded.get(key) or ()
            if "wandb" in excluded or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            values[key] = value
        if values:
            self.tracker.log(values, step)

    def close(self) -> None:
        pass


def _artifact_name(name: str) -> str:
    # W&B artifact names allow alphanumerics, dashes, underscores and dots
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def start_wandb(
    config: dict[str, Any],
    *,
    project: str,
    entity: str | None = None,
    name: str | None = None,
    folder: str | Path | None = None,
    run_id: str | None = None,
    tags: list[str] | None = None,
    init_timeout: float = 15.0,
) -> Tracker:
    """Open a W&B run that falls back to offline instead of failing or hanging.

    Args:
        config: The run's config (logged as W&B config).
        project: W&B project.
        entity: W&B entity (user or team); the account's default when ``None``.
        name: Display name of the run.
        folder: Where W&B writes its local files (``<folder>/wandb/...``).
        run_id: Resume this W&B run (e.g. after ``--resume``).
        tags: W&B tags.
        init_timeout: Seconds an online ``wandb.init`` may take before we go offline.

    Returns:
        The tracker; ``tracker.mode`` says whether it ended up online or offline.

    Raises:
        ImportError: wandb is not installed.
    """
    try:
        import wandb
    except ImportError as exc:
        raise ImportError('W&B tracking needs wandb: pip install "lrenv[wandb]" (or pip install wandb)') from exc

    kwargs: dict[str, Any] = dict(project=project, entity=entity, name=name, config=config, tags=tags, id=run_id)
    if run_id is not None:
        kwargs["resume"] = "allow"
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        kwargs["dir"] = str(folder)
    mode = choose_mode()
    if mode == "online" and not server_reachable():
        warnings.warn(
            f"W&B: cannot reach {_base_url()}; tracking this run offline. Sync it later with `wandb sync`.",
            TrackingWarning,
            stacklevel=2,
        )
        mode = "offline"
    if mode != "offline":
        try:
            return Tracker(wandb.init(mode=mode, settings=wandb.Settings(init_timeout=init_timeout), **kwargs))
        except Exception as exc:  # CommError, UsageError (bad key), timeouts: all end in offline
            warnings.warn(
                f"W&B: starting an online run failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "tracking this run offline. Sync it later with `wandb sync`.",
                TrackingWarning,
                stacklevel=2,
            )
            try:
                wandb.finish(exit_code=1)
            except Exception:
                pass
    return Tracker(wandb.init(mode="offline", **kwargs))
