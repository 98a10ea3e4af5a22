"""Writing files the user asked for: one place that decides what a write may touch.

Every file guestmem writes at a user's request (``report --out``, ``fill DIR``,
``explore --out DIR``, the scratch script of ``vm --scratch``) goes through
:class:`Directory` or :func:`write_file`, which:

* work relative to a descriptor of the chosen directory, so a name never walks out of it
  (a name is one path component);
* refuse, before writing anything, a target that is a symbolic link (dangling or not), a
  directory, a FIFO, a device or a socket, or a regular file with more than one hard
  link: writing there would change something outside the chosen place, block, or fail;
* write a new file under a temporary name (``O_CREAT | O_EXCL | O_NOFOLLOW``) in the same
  directory and rename it over the target, so a reader never sees half a file, a link
  planted meanwhile is replaced rather than followed, and a failed write leaves the old
  file as it was;
* report whatever they refuse or cannot do (an empty path, a NUL byte, a missing
  directory, a read-only file system, no space left) as :class:`OutputError`, one line
  ``PATH: cannot write: reason``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import tempfile
from pathlib import Path

from guestmem.errors import GuestmemError
from guestmem.printable import printable

_KINDS = (
    (stat.S_ISLNK, "a symbolic link (never followed)"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class OutputError(GuestmemError, ValueError):
    """A file guestmem will not or cannot write; the message is ``PATH: reason``."""


def shown(path: str | Path, limit: int = 120) -> str:
    """``path`` for a one-line message: at most ``limit`` characters, control and
    bidirectional-override characters escaped."""
    text = printable(str(path))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_path(path: str, what: str = "") -> None:
    """Bad input in a path itself: empty, or with a NUL byte (``what`` prefixes the message)."""
    prefix = f"{what}: " if what else ""
    if not path:
        raise OutputError(f"{prefix}an empty path (name a file or directory; '.' is the current one)")
    if "\0" in path:
        raise OutputError(f"{prefix}{shown(repr(path))}: a path cannot contain a NUL byte")


def check_directory(path: str, what: str = "") -> None:
    """Refuse now a directory :class:`Directory` would refuse: a bad path, or something
    other than a directory there (a missing one is made when written to)."""
    check_path(path, what)
    prefix = f"{what}: " if what else ""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise OutputError(f"{prefix}{shown(path)}: {_reason(err)}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise OutputError(f"{prefix}{shown(path)}: not a directory")


def _refusal(mode: int, links: int) -> str | None:
    """Why a file of this mode and link count may not be replaced, or None."""
    for test, kind in _KINDS:
        if test(mode):
            return f"{kind} is there, not a regular file"
    if not stat.S_ISREG(mode):
        return "something other than a regular file is there"
    if links > 1:
        return f"the file there has {links} hard links (writing it would change the others)"
    return None


def _reason(err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return "no space left on the device"
    if err.errno == errno.EROFS:
        return "the file system is read-only"
    return err.strerror or str(err)


class Directory:
    """An open directory that files are written into by name (see the module docstring)."""

    def __init__(self, path: str | Path, *, create: bool = False, what: str = "") -> None:
        self.path = str(path)
        self.what = what
        check_path(self.path, what)
        if create:
            try:
                os.makedirs(self.path, exist_ok=True)
            except OSError as err:
                raise self._error(self.path, f"cannot create the directory: {_reason(err)}") from None
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            if err.errno == errno.ENOTDIR:
                raise self._error(self.path, "not a directory") from None
            if err.errno == errno.ENOENT:
                raise self._error(self.path, "the directory does not exist") from None
            raise self._error(self.path, f"cannot open the directory: {_reason(err)}") from None

    def __enter__(self) -> Directory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _error(self, path: str, reason: str) -> OutputError:
        prefix = f"{self.what}: " if self.what else ""
        return OutputError(f"{prefix}{shown(path)}: {reason}")

    def fresh(self, prefix: str) -> str:
        """A new directory inside this one, named ``prefix`` and a part no other name has
        (private to this user, as ``mkdtemp`` makes it); its path."""
        try:
            return tempfile.mkdtemp(prefix=prefix, dir=self.path)
        except OSError as err:
            raise self._error(self.path, f"cannot create a directory in it: {_reason(err)}") from None

    def where(self, name: str) -> str:
        return os.path.join(self.path, name)

    def check(self, name: str) -> None:
        """Refuse ``name`` now if a write to it would be refused (nothing is written)."""
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise AssertionError(f"not a plain file name: {name!r}")
        try:
            info = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        except OSError as err:
            raise self._error(self.where(name), f"cannot write: {_reason(err)}") from None
        why = _refusal(info.st_mode, info.st_nlink)
        if why is not None:
            raise self._error(self.where(name), f"cannot write: {why}")

    def write(self, name: str, data: str | bytes) -> str:
        """Write ``data`` (text as UTF-8) to ``name`` in this directory; the path written."""
        self.check(name)
        raw = data.encode("utf-8") if isinstance(data, str) else data
        temporary = f".{name[:200]}.{secrets.token_hex(4)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(temporary, flags, 0o666, dir_fd=self.fd)
        except OSError as err:
            raise self._error(self.where(name), f"cannot write: {_reason(err)}") from None
        renamed = False
        try:
            try:
                view = memoryview(raw)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.rename(temporary, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            renamed = True
        except OSError as err:
            if err.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise self._error(self.where(name), "cannot write: a directory is in the way") from None
            raise self._error(self.where(name), f"cannot write: {_reason(err)}") from None
        finally:
            if not renamed:  # a failed or interrupted write leaves nothing behind
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=self.fd)
        return self.where(name)


def _split(path: str) -> tuple[str, str]:
    head, name = os.path.split(path)
    return head or ".", name


def check_file(path: str, what: str = "") -> None:
    """Refuse now a path :func:`write_file` would refuse (its directory must exist)."""
    check_path(path, what)
    head, name = _split(path)
    if name in ("", ".", ".."):
        raise OutputError(f"{what + ': ' if what else ''}{shown(path)}: cannot write: names a directory")
    with Directory(head, what=what) as directory:
        directory.check(name)


def write_file(path: str, data: str | bytes, what: str = "") -> str:
    """Write ``data`` to ``path`` (see the module docstring); its directory must exist."""
    check_file(path, what)
    head, name = _split(path)
    with Directory(head, what=what) as directory:
        directory.write(name, data)
    return path
