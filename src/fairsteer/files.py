"""Files: JSON parsing with clear errors, and atomic, signal-safe writing.

Every file fairsteer writes (models, solutions, steered tables, reports) goes
through :func:`atomic_output`: a temporary file in the target's directory that
is renamed over the target only when writing succeeded, so a reader never sees
a half-written file and an interrupted run leaves the old file in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from fairsteer.errors import InputError

__all__ = ["atomic_output", "parse_json", "read_json", "write_atomic"]


def parse_json(text: str) -> Any:
    """Parse JSON text.

    Raises
    ------
    InputError
        For malformed JSON, and for JSON nested too deeply for the parser
        (a model is at most four levels deep; this is never a real model).
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise InputError(
            "malformed JSON: nested too deeply to be a fairsteer file; check it is the right file"
        ) from None


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read and parse a JSON file (UTF-8, a byte-order mark allowed).

    Raises
    ------
    InputError
        If the file is missing, unreadable or not valid JSON.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    return parse_json(text)


# Signals that end a process by default while a file is being written: the
# temporary file is removed, then the signal is re-delivered to its old handler.
_CLEANUP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class _Terminated(BaseException):
    """Raised by the temporary signal handler of :func:`atomic_output`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _current_umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], text: str | bytes) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``.

    Readers see the old file or the complete new one, never a partial one.
    The new file gets the mode of the file it replaces, or else the mode a
    plain ``open(path, "w")`` would give (0666 minus the umask). If the
    process is told to terminate (SIGTERM, SIGHUP) during the write, the
    temporary file is removed before the signal takes its usual effect
    (:func:`atomic_output`).

    Parameters
    ----------
    path : str or path-like
        The file to write.
    text : str or bytes
        Its content (str is encoded as UTF-8).
    """
    data = text.encode() if isinstance(text, str) else text
    with atomic_output(path) as fh:
        fh.write(data)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` when the ``with`` block succeeds.

    The data go to a temporary file in the same folder that is renamed over
    ``path`` at the end, so readers see the old file or the complete new one;
    the new file gets the mode of the file it replaces, or else 0666 minus
    the umask; on an error, or when the process is told to terminate
    (SIGTERM, SIGHUP) during the block, the temporary file is removed and
    ``path`` is left as it was (a terminating signal then takes its usual
    effect).

    Parameters
    ----------
    path : str or path-like
        The file to write.

    Yields
    ------
    binary file
        Open for writing; closed by the context manager.
    """
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0o666 & ~_current_umask()
    # While "active" a terminating signal aborts the write (raises _Terminated);
    # afterwards it is only recorded, and re-delivered once the handlers are back.
    state: dict[str, Any] = {"active": True, "pending": None}
    previous = _install_cleanup_handlers(state)
    tmp = None
    try:
        try:
            fd, tmp = tempfile.mkstemp(
                prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or "."
            )
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                os.fchmod(fh.fileno(), mode)
            os.replace(tmp, path)
            tmp = None
        except _Terminated as exc:
            state["pending"] = exc.signum
        finally:
            state["active"] = False
            _remove(tmp)
    except _Terminated as exc:  # arrived in the instant before "active" was cleared
        state["pending"] = exc.signum
    finally:
        _restore_handlers(previous)
    if state["pending"] is not None:
        signal.raise_signal(state["pending"])  # the usual effect: by default, termination
        name = signal.Signals(state["pending"]).name
        raise InterruptedError(f"writing {path} was interrupted by {name}")


def _remove(tmp: str | None) -> None:
    if tmp is not None:
        Path(tmp).unlink(missing_ok=True)


def _install_cleanup_handlers(state: dict[str, Any]) -> dict[int, Any]:
    """Make SIGTERM/SIGHUP raise :class:`_Terminated` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        if state["active"]:
            raise _Terminated(signum)
        state["pending"] = signum

    previous = {}
    for sig in _CLEANUP_SIGNALS:
        old = signal.getsignal(sig)
        if old is signal.SIG_IGN or old is None:
            continue  # ignored (e.g. nohup) or set outside Python: leave it alone
        previous[sig] = old
        signal.signal(sig, handler)
    return previous


def _restore_handlers(previous: dict[int, Any]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)
