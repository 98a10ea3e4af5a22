"""Host accesses to a guest_memfd mapping that may fault, without risking the caller.

The kernel answers a host touch of a private page, or of a page past the end of the
file, with ``SIGBUS`` (uapi.md §10, kvm-here.md §8), which Python cannot survive. So every
access is made by a forked helper process that shares the mapping (``MAP_SHARED``
survives ``fork``): it copies page by page in ascending order and reports each page as
it completes. If it dies, the access stopped at the first unreported page, earlier pages
done, and the caller gets :class:`~guestmem.errors.HostFault` naming the signal; the
next access forks a new helper.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import resource
import signal
import struct

from guestmem.errors import HostFault
from guestmem.kvm import syscalls
from guestmem.kvm.gmem import Mapping
from guestmem.uapi.kvm import PAGE_SIZE

_READ, _WRITE = 1, 2
_HEADER = struct.Struct("<BQQ")
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE = 1, 4


def _chunks(offset: int, size: int) -> list[tuple[int, int]]:
    out = []
    end = offset + size
    while offset < end:
        length = min(PAGE_SIZE - offset % PAGE_SIZE, end - offset)
        out.append((offset, length))
        offset += length
    return out


def _read_exact(fd: int, size: int) -> bytes:
    parts = []
    while size:
        part = os.read(fd, min(size, 1 << 16))
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
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

    def _check(self, offset: int, size: int) -> None:
        if offset < 0 or size < 0:
            raise ValueError(f"offset and size must be >= 0: offset={offset} size={size}")
        if size and offset >= self.mapping.length:
            raise ValueError(
                f"offset {offset:#x} is beyond the host mapping ({self.mapping.length:#x} bytes)"
            )

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

    def _request(self, op: int, offset: int, size: int, data: bytes = b"") -> None:
        if not self.pid:
            self._spawn()
        try:
            _write_all(self.requests, _HEADER.pack(op, offset, size) + data)
        except BrokenPipeError:
            raise self._fault(offset) from None

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at file ``offset``; :class:`HostFault` if a page faults."""
        self._check(offset, size)
        if not size:
            return b""
        self._request(_READ, offset, size)
        out = bytearray()
        for start, length in _chunks(offset, size):
            part = _read_exact(self.replies, length)
            if len(part) < length:
                raise self._fault(start)
            out += part
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at file ``offset``; on :class:`HostFault`, pages before the
        faulting one are written."""
        self._check(offset, len(data))
        if not data:
            return
        self._request(_WRITE, offset, len(data), bytes(data))
        for start, _length in _chunks(offset, len(data)):
            if len(_read_exact(self.replies, 1)) < 1:
                raise self._fault(start)
