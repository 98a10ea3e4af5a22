"""Host accesses to a guest_memfd mapping that may fault, without risking the caller.

The kernel answers a host touch of a private page, or of a page past the end of the
file, with ``SIGBUS`` (docs/semantics.md §3 *Host access*, docs/kernel.md §8), which Python
cannot survive. So every access is made by a forked helper process that shares the mapping (``MAP_SHARED``
survives ``fork``): it copies page by page in ascending order and reports each page as
it completes. If it dies, the access stopped at the first unreported page, earlier pages
done, and the caller gets :class:`~guestmem.errors.HostFault` naming the signal; the
next access forks a new helper. A helper that died between two accesses (a memory error
on a page it had mapped may kill it: docs/semantics.md §3 *Memory errors*) did not fault
on anything the caller asked for: before each request, one that has exited is reaped and
replaced, so the next access is not reported as a fault on its page.

An access goes to the helper in requests of at most :data:`REQUEST` bytes, each answered
before the next is sent, so neither process holds more than that of it at once, however
large the access. The part of an access beyond the mapping (past the end of the file and
the mapping's slack) faults with ``SIGBUS`` as a page past the end does: the kernel gives
every such page that answer, and the model does too (docs/semantics.md §3 *Host access*).
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import resource
import signal
import struct
from collections.abc import Iterator

from guestmem import progress
from guestmem.errors import HostFault
from guestmem.kvm import syscalls
from guestmem.kvm.gmem import Mapping
from guestmem.uapi.kvm import PAGE_SIZE

_READ, _WRITE = 1, 2
_HEADER = struct.Struct("<BQQ")
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE = 1, 4
#: The most one request to the helper moves (bytes; a whole number of pages).
REQUEST = 1 << 20


def _chunks(offset: int, size: int) -> Iterator[tuple[int, int]]:
    """``(offset, length)`` per page touched by ``[offset, offset+size)``, ascending."""
    end = offset + size
    while offset < end:
        length = min(PAGE_SIZE - offset % PAGE_SIZE, end - offset)
        yield offset, length
        offset += length


def _requests(offset: int, size: int) -> Iterator[tuple[int, int]]:
    """``[offset, offset+size)`` cut at :data:`REQUEST`-aligned boundaries, ascending."""
    end = offset + size
    while offset < end:
        length = min(REQUEST - offset % REQUEST, end - offset)
        yield offset, length
        offset += length


def _read_exact(fd: int, size: int) -> bytes:
    parts = []
    while size:
        part = os.read(fd, min(size, 1 << 16))
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _serve(requests: int, replies: int, address: int) -> None:
    """The helper's loop: one request at a time until the parent closes the pipe."""
    faulthandler.disable()  # a fault is an expected answer, not a crash to report
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = ctypes.CDLL(None)
    libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.signal(signal.SIGBUS, signal.SIG_DFL)
    progress.default_stop_signals()
    keep = sorted({requests, replies})
    os.closerange(3, keep[0])  # other helpers' pipes must not stay open here
    os.closerange(keep[0] + 1, keep[-1])
    os.closerange(keep[-1] + 1, 1 << 16)
    while True:
        header = _read_exact(requests, _HEADER.size)
        if len(header) < _HEADER.size:
            return
        op, offset, size = _HEADER.unpack(header)
        data = _read_exact(requests, size) if op == _WRITE else b""
        pos = 0
        for start, length in _chunks(offset, size):
            if op == _READ:
                _write_all(replies, ctypes.string_at(address + start, length))
            else:
                ctypes.memmove(address + start, data[pos : pos + length], length)
                _write_all(replies, b"\x01")
            pos += length


class HostAccess(syscalls.Handle):
    """Reads and writes through ``mapping`` (file offsets), safe against ``SIGBUS``.

    ``size`` is the file size, used only to explain a fault. An access must start
    inside the mapping; the mapping may be longer than the file so that accesses past
    the end reach the kernel and fault there.
    """

    def __init__(self, mapping: Mapping, size: int) -> None:
        self.mapping = mapping
        self.size = size
        self.pid = 0
        self.requests = -1
        self.replies = -1

    def _spawn(self) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the helper process
            try:
                _serve(req_r, rep_w, self.mapping.address)
            finally:
                os._exit(0)
        os.close(req_r)
        os.close(rep_w)
        self.pid, self.requests, self.replies = pid, req_w, rep_r

    def close(self) -> None:
        """Stop the helper (it exits when its request pipe closes) and reap it."""
        if self.pid:
            os.close(self.requests)
            os.close(self.replies)
            os.waitpid(self.pid, 0)
            self.pid = 0

    def _check(self, offset: int, size: int) -> int:
        """How much of the access lies inside the mapping (the rest faults)."""
        if offset < 0 or size < 0:
            raise ValueError(f"offset and size must be >= 0: offset={offset} size={size}")
        return max(0, min(offset + size, self.mapping.length) - offset)

    def _beyond(self, offset: int) -> HostFault:
        """The first page past the mapping: past the end of the file, so ``SIGBUS``."""
        start = max(offset, self.mapping.length)
        return HostFault(signal.SIGBUS.name, start - start % PAGE_SIZE, "past the end of the guest_memfd")

    def _fault(self, offset: int) -> HostFault:
        """The helper died touching the page at ``offset``: reap it and describe why."""
        offset -= offset % PAGE_SIZE
        os.close(self.requests)
        os.close(self.replies)
        _, status = os.waitpid(self.pid, 0)
        self.pid = 0
        if os.WIFSIGNALED(status):
            name = signal.Signals(os.WTERMSIG(status)).name
        else:
            name = f"exit status {os.waitstatus_to_exitcode(status)}"
        if offset >= self.size:
            reason = "past the end of the guest_memfd"
        else:
            reason = "the kernel refused to map the page for the host (not shared)"
        return HostFault(name, offset, reason)

    def _reap_idle(self) -> None:
        """Reap the helper if it has exited while idle (no request of ours was pending)."""
        if self.pid and os.waitpid(self.pid, os.WNOHANG) != (0, 0):
            os.close(self.requests)
            os.close(self.replies)
            self.pid = 0

    def _request(self, op: int, offset: int, size: int, data: bytes | memoryview = b"") -> None:
        self._reap_idle()
        if not self.pid:
            self._spawn()
        try:
            _write_all(self.requests, _HEADER.pack(op, offset, size) + bytes(data))
        except BrokenPipeError:
            raise self._fault(offset) from None

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at file ``offset``; :class:`HostFault` if a page faults."""
        inside = self._check(offset, size)
        out = bytearray()
        for first, length in _requests(offset, inside):
            self._request(_READ, first, length)
            for start, part_length in _chunks(first, length):
                part = _read_exact(self.replies, part_length)
                if len(part) < part_length:
                    raise self._fault(start)
                out += part
        if inside < size:
            raise self._beyond(offset)
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at file ``offset``; on :class:`HostFault`, pages before the
        faulting one are written."""
        inside = self._check(offset, len(data))
        view = memoryview(data)
        for first, length in _requests(offset, inside):
            self._request(_WRITE, first, length, view[first - offset : first - offset + length])
            for start, _length in _chunks(first, length):
                if len(_read_exact(self.replies, 1)) < 1:
                    raise self._fault(start)
        if inside < len(data):
            raise self._beyond(offset)
