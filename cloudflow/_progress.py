"""Progress bars for saving and loading bundles: on a terminal only, unless asked.

A bar appears when stderr is a terminal and tqdm is installed (``cloudflow[progress]``), and
only for a save or load that takes longer than :data:`DELAY` seconds, so small bundles and logs
stay clean. ``CLOUDFLOW_PROGRESS=1`` shows bars anywhere (a CI log, a file), ``0`` never.

The same switch quiets MLflow's own "Downloading artifacts" bars while cloudflow downloads a
bundle from a tracking server, unless ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` is set.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import os
import sys
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any

ENV = "CLOUDFLOW_PROGRESS"
DELAY = 0.5
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_current: contextvars.ContextVar[Steps | None] = contextvars.ContextVar(
    "cloudflow_progress", default=None
)
_env_lock = threading.Lock()


def enabled() -> bool:
    """Whether bars are shown: ``CLOUDFLOW_PROGRESS`` if set, else whether stderr is a TTY."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in _FALSE:
        return False
    if value not in _TRUE:
        try:
            if not sys.stderr.isatty():
                return False
        except (AttributeError, ValueError):  # stderr replaced or closed
            return False
    return importlib.util.find_spec("tqdm") is not None


class Steps:
    """A bar over the steps of one save or load; a no-op when bars are off.

    Used as a context manager; inside it, :func:`advance` moves the innermost bar.

    Example:
        >>> with Steps("Loading bundle", total=2):
        ...     advance("model clf")
        ...     advance("code")
    """

    def __init__(self, desc: str, total: int) -> None:
        self._bar: Any = None
        self._token: contextvars.Token[Steps | None] | None = None
        if enabled():
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total,
                desc=desc,
                unit="step",
                delay=DELAY,
                leave=False,
                file=sys.stderr,
                dynamic_ncols=True,
            )

    def advance(self, label: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(label, refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Steps:
        self._token = _current.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _current.reset(self._token)
        self.close()


def advance(label: str) -> None:
    """Move the active bar one step, showing ``label``; does nothing when none is active."""
    steps = _current.get()
    if steps is not None:
        steps.advance(label)


_quieted = 0  # downloads under way with MLflow's bars turned off by cloudflow


@contextlib.contextmanager
def mlflow_download_bars() -> Iterator[None]:
    """Let MLflow show its download bars only when cloudflow would show its own."""
    global _quieted
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    with _env_lock:
        quiet = _quieted > 0 or (name not in os.environ and not enabled())
        if quiet:
            _quieted += 1
            os.environ[name] = "false"
    try:
        yield
    finally:
        if quiet:
            with _env_lock:
                _quieted -= 1
                if _quieted == 0:
                    os.environ.pop(name, None)
