"""Reading a user's file without hanging on it: regular files only, and a deadline on I/O.

Every place that reads a file the user pointed at (image decoding, hashing for the
workspace, model files) goes through here, so one rule decides what may be read:

* **regular files only, checked before anything is opened.** A named pipe (FIFO) blocks
  an ``open`` until someone writes to it; ``/dev/zero`` or ``/dev/urandom`` behind a
  symlink never end; a socket or a disk device is not an image either. The path is
  ``stat``-ed first and refused with a specific reason; it is then opened non-blocking and
  checked again on the open descriptor (``fstat``), so a file swapped for a pipe in
  between is refused too;
* **symlink trouble has words**: a broken link and a link loop each get their own reason;
* **a deadline on blocking I/O**: opening and reading run in a daemon thread, and a read
  that makes no progress for :func:`read_timeout` seconds (a network share that stopped
  answering) ends with a reason instead of hanging the batch. The stuck thread is
  abandoned (a daemon: it cannot keep the program alive);
* **names that are not valid UTF-8** (bytes such as 0xE9 from an old Windows share) are
  kept as Python's ``surrogateescape`` text for opening the file, and shown, stored and
  exported as :func:`path_text` (``caf\\xe9.jpg``), which :func:`real_path` turns back.

Standard library only: the store imports it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

DEFAULT_READ_TIMEOUT = 60.0  # seconds without progress before a read counts as stalled
READ_TIMEOUT_ENV = "EYETRIAGE_READ_TIMEOUT"
CHUNK = 1 << 20
_O_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)  # a FIFO swapped in after the stat cannot block the open
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)

T = TypeVar("T")


class UnreadableFile(OSError):
    """A file that was refused or could not be read; ``reason`` says why, in words."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = path_text(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def read_timeout() -> float:
    """Seconds a read may make no progress (``EYETRIAGE_READ_TIMEOUT`` overrides the default)."""
    try:
        value = float(os.environ.get(READ_TIMEOUT_ENV, DEFAULT_READ_TIMEOUT))
    except ValueError:
        return DEFAULT_READ_TIMEOUT
    return value if value > 0 else DEFAULT_READ_TIMEOUT


# --------------------------------------------------------------------------- names


def path_text(path: str | os.PathLike[str]) -> str:
    """The path as text that is always valid UTF-8: bytes that are not are written ``\\xNN``.

    Safe to print, store in SQLite and write to CSV/JSON; :func:`real_path` finds the file
    again from it.
    """
    text = os.fspath(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def real_path(text: str | os.PathLike[str]) -> Path:
    """The file a :func:`path_text` names: the text itself if it exists, else its ``\\xNN``
    escapes read back as raw bytes (the name as it is on disk)."""
    raw = os.fspath(text)
    if "\\x" not in raw or os.path.lexists(raw):
        return Path(raw)
    try:
        candidate = os.fsdecode(bytes(_unescape_bytes(raw)))
    except (ValueError, UnicodeError):
        return Path(raw)
    return Path(candidate) if os.path.lexists(candidate) else Path(raw)


def _unescape_bytes(raw: str) -> bytearray:
    out = bytearray()
    i = 0
    while i < len(raw):
        m = _ESCAPE.match(raw, i)
        if m:
            out.append(int(m.group(1), 16))
            i = m.end()
        else:
            out += raw[i].encode("utf-8", "surrogateescape")
            i += 1
    return out


# --------------------------------------------------------------------------- the rule


def special_file_reason(mode: int) -> str | None:
    """Why a file of this ``st_mode`` is not read (``None`` for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "is a named pipe (FIFO), not a regular file: refused, reading it could wait forever"
    if stat.S_ISCHR(mode):
        return (
            "is a character device (such as /dev/zero or a terminal), not a regular file: "
            "refused, reading it may never end"
        )
    if stat.S_ISBLK(mode):
        return "is a block device (a whole disk or partition), not a regular file: refused"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a regular file: refused"
    return "is not a regular file: refused"


def _os_error_reason(path: str | os.PathLike[str], e: OSError) -> str:
    code = e.errno
    if code == errno.ELOOP:
        return "symbolic link loop (the link leads back to itself): refused"
    if code == errno.ENOENT:
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"broken symbolic link (its target {path_text(target)} does not exist)"
        return "file not found"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.ENXIO:
        return "is a socket or a device without a reader, not a regular file: refused"
    if code == errno.EISDIR:
        return "is a folder, not a file"
    if code == errno.ENAMETOOLONG:
        return "file name too long"
    return f"cannot be read ({e.strerror or e})"


def check_regular(path: str | os.PathLike[str]) -> os.stat_result:
    """``stat`` the path (following links) and refuse anything but a regular file.

    Raises :class:`UnreadableFile` with a specific reason: not found, broken link, link
    loop, permission denied, folder, FIFO, device, socket.
    """
    path = real_path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise UnreadableFile(path, _os_error_reason(path, e)) from None
    reason = special_file_reason(st.st_mode)
    if reason:
        raise UnreadableFile(path, reason)
    return st


def open_regular(path: str | os.PathLike[str]) -> tuple[int, os.stat_result]:
    """An open read-only descriptor of a regular file and its ``fstat``.

    The path is checked before it is opened (so nothing special is ever opened) and the
    descriptor after (so nothing swapped in between is read). The caller closes it.
    """
    check_regular(path)
    path = real_path(path)
    try:
        fd = os.open(path, _O_FLAGS)
    except OSError as e:
        raise UnreadableFile(path, _os_error_reason(path, e)) from None
    try:
        st = os.fstat(fd)
        reason = special_file_reason(st.st_mode)
        if reason:
            raise UnreadableFile(path, reason)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


# --------------------------------------------------------------------------- deadline


def with_deadline(
    path: str | os.PathLike[str],
    work: Callable[[Callable[[int], None]], T],
    timeout: float | None = None,
) -> T:
    """Run ``work(progress)`` in a daemon thread; stop waiting if it stalls.

    ``work`` calls ``progress(n)`` after each chunk it reads; when ``timeout`` seconds pass
    without a call (or without the work finishing), :class:`UnreadableFile` says the read
    stalled. Errors raised by ``work`` are raised here.
    """
    limit = read_timeout() if timeout is None else timeout
    done = threading.Event()
    box: dict[str, object] = {}
    moved = [0]

    def progress(n: int) -> None:
        moved[0] += max(1, int(n))

    def run() -> None:
        try:
            box["value"] = work(progress)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
            box["error"] = e
        finally:
            done.set()

    thread = threading.Thread(target=run, name="eyetriage-read", daemon=True)
    thread.start()
    seen = 0
    while not done.wait(limit):
        if moved[0] == seen:
            raise UnreadableFile(
                path,
                f"reading stalled: no data for {limit:g} s (a network drive or removable "
                "disk not answering?); skipped",
            )
        seen = moved[0]
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def _read_all(path: str | os.PathLike[str], max_bytes: int | None, progress) -> bytes:  # noqa: ANN001
    fd, st = open_regular(path)
    progress(1)
    if max_bytes is not None and st.st_size > max_bytes:
        os.close(fd)
        raise UnreadableFile(
            path,
            f"file is too large ({st.st_size / 2**20:.0f} MB; the limit is "
            f"{max_bytes / 2**20:.0f} MB)",
        )
    parts: list[bytes] = []
    total = 0
    for chunk in _chunks(path, fd, progress):
        parts.append(chunk)
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise UnreadableFile(path, "file grew past the size limit while being read")
    return b"".join(parts)


def _chunks(path: str | os.PathLike[str], fd: int, progress) -> Iterator[bytes]:  # noqa: ANN001
    """The open file ``fd`` in blocks, each reported to ``progress``; closed at the end."""
    with os.fdopen(fd, "rb", buffering=0) as handle:
        while True:
            try:
                chunk = handle.read(CHUNK)
            except OSError as e:
                raise UnreadableFile(path, _os_error_reason(path, e)) from None
            if not chunk:
                return
            progress(len(chunk))
            yield chunk


def read_file(
    path: str | os.PathLike[str], max_bytes: int | None = None, timeout: float | None = None
) -> bytes:
    """The whole content of a regular file, read under the stall deadline.

    Raises :class:`UnreadableFile` for special files, link trouble, permission, a file
    larger than ``max_bytes`` and a stalled read.
    """
    return with_deadline(path, lambda progress: _read_all(path, max_bytes, progress), timeout)


def _hash(path: str | os.PathLike[str], progress) -> tuple[str, int]:  # noqa: ANN001
    fd, _ = open_regular(path)
    progress(1)
    digest = hashlib.sha256()
    size = 0
    for chunk in _chunks(path, fd, progress):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def sha256_and_size(path: str | os.PathLike[str], timeout: float | None = None) -> tuple[str, int]:
    """Hex SHA-256 and byte count of a regular file, streamed under the stall deadline."""
    return with_deadline(path, lambda progress: _hash(path, progress), timeout)


def read_head(path: str | os.PathLike[str], n: int, timeout: float | None = None) -> bytes:
    """The first ``n`` bytes of a regular file (for sniffing a format), under the deadline.

    Special files are refused like everywhere else (:class:`UnreadableFile`).
    """

    def work(progress: Callable[[int], None]) -> bytes:
        fd, _ = open_regular(path)
        progress(1)
        with os.fdopen(fd, "rb", buffering=0) as handle:
            return handle.read(n)

    return with_deadline(path, work, timeout)


CSV_MAX_BYTES = 256 << 20  # a label or review sheet larger than this is not one


def read_text(
    path: str | os.PathLike[str],
    encoding: str = "utf-8-sig",
    max_bytes: int | None = CSV_MAX_BYTES,
    timeout: float | None = None,
) -> str:
    """A regular text file (a label or review CSV), decoded, under the stall deadline.

    Raises :class:`UnreadableFile` for special files and the like (see :func:`read_file`)
    and for text that is not valid ``encoding``, with the byte offset where it breaks.
    """
    data = read_file(path, max_bytes=max_bytes, timeout=timeout)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise UnreadableFile(
            path, f"is not {encoding.removesuffix('-sig').upper()} text (byte {e.start})"
        ) from None
