"""A vCPU: registers, ``KVM_RUN`` with a time limit, and exit decoding (api.rst §4.10, §5).

``run`` returns an :class:`Exit` record for IO, HLT, MMIO, HYPERCALL and the other
reasons; ``KVM_EXIT_MEMORY_FAULT`` arrives on ``KVM_RUN``'s ``EFAULT`` error path with
``exit_reason`` 39 and is raised as :class:`~guestmem.errors.MemoryFault` (docs/semantics.md §9).
A guest that does not exit within the limit is stopped by the :mod:`~guestmem.kvm.watchdog`
(a signal makes ``KVM_RUN`` fail with ``EINTR``; ``immediate_exit`` covers a signal that
lands before entry, docs/kernel.md §10 item 9) and reported as :class:`GuestTimeout`.

``run`` is the per-exit hot path of every guest access (docs/bench.md ``kvm_run_vs_c``):
it calls ``fcntl.ioctl`` itself (failures still become :class:`IoctlError` through
:func:`guestmem.kvm.syscalls.failure`), a limited run makes no syscall for its limit, and
an :class:`Exit` is a named tuple.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from guestmem.errors import GuestExit, IoctlError, MemoryFault
from guestmem.kvm import syscalls, watchdog
from guestmem.uapi.kvm import (
    EXIT_REASON_NAMES,
    KVM_EXIT_FAIL_ENTRY,
    KVM_EXIT_HYPERCALL,
    KVM_EXIT_INTERNAL_ERROR,
    KVM_EXIT_IO,
    KVM_EXIT_IO_OUT,
    KVM_EXIT_MEMORY_FAULT,
    KVM_EXIT_MMIO,
    KVM_GET_REGS,
    KVM_GET_SREGS,
    KVM_GET_STATS_FD,
    KVM_RUN,
    KVM_SET_CPUID2,
    KVM_SET_REGS,
    KVM_SET_SREGS,
    KvmRegs,
    KvmRun,
    KvmSregs,
)

if TYPE_CHECKING:
    from guestmem.kvm.vm import Vm


#: Default time limit of one ``KVM_RUN``: a nested guest has been seen to hang (the test
#: kernels' README, *Facts measured inside*).
RUN_LIMIT = 30.0


class GuestTimeout(GuestExit, TimeoutError):
    """The guest ran ``limit`` seconds without an exit to userspace and was stopped."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"guest did not exit within the {limit:g} s time limit (stopped)")
        self.limit = limit

    def record(self) -> dict[str, Any]:
        return {"reason": "TIMEOUT", "limit": self.limit}


class Exit(NamedTuple):
    """One exit to userspace: ``reason`` is the ``KVM_EXIT_*`` name without the prefix,
    ``code`` its number, ``fields`` the decoded union member (e.g. ``port``, ``data`` for
    IO). A named tuple: the cheapest record to make once per exit."""

    reason: str
    code: int
    fields: dict[str, Any]

    def __str__(self) -> str:
        detail = ", ".join(
            f"{k}={v:#x}" if isinstance(v, int) else f"{k}={v!r}" for k, v in self.fields.items()
        )
        return f"KVM_EXIT_{self.reason}({detail})"


class UnexpectedExit(GuestExit):
    """The guest program stopped with an exit it does not produce by design."""

    def __init__(self, exit_: Exit) -> None:
        super().__init__(f"unexpected guest exit: {exit_}")
        self.exit = exit_

    def record(self) -> dict[str, Any]:
        return {"reason": self.exit.reason, **{k: v for k, v in self.exit.fields.items() if k != "data"}}


_EXIT_REASON = struct.Struct("<I")  # kvm_run.exit_reason @8
#: exit_reason @8, then (from the union @32) direction, size, port, count, data_offset
_REASON_AND_IO = struct.Struct("<I20xBBHIQ")
_MMIO = struct.Struct("<Q8sIB")  # phys_addr, data, len, is_write @32
_HYPERCALL = struct.Struct("<Q6QQQ")  # nr, args[6], ret, flags @32
_MEMORY_FAULT = struct.Struct("<QQQ")  # flags, gpa, size @32
_INTERNAL = struct.Struct("<II16Q")  # suberror, ndata, data[16] @32
_FAIL_ENTRY = struct.Struct("<Q")  # hardware_entry_failure_reason @32
_UNION = 32
#: ``KVM_EXIT_IO`` → ``IO``: the names an :class:`Exit` carries.
_SHORT_NAMES = {code: name.removeprefix("KVM_EXIT_") for code, name in EXIT_REASON_NAMES.items()}
_BYTES = tuple(bytes((value,)) for value in range(256))
_new_exit = tuple.__new__  # Exit(...) without the named tuple's Python-level __new__
_raw_ioctl = syscalls.raw_ioctl


def decode_exit(run: memoryview) -> Exit:
    """Decode ``kvm_run`` (a byte view of the mapping) after a successful ``KVM_RUN``.

    Layouts: docs/kernel.md §7, docs/semantics.md §9. ``struct`` reads straight from the shared
    mapping; this is the per-exit hot path of every guest access.
    """
    # exit_reason and the IO member in one read: IO is the exit guest programs make most
    code, direction, size, port, count, data_offset = _REASON_AND_IO.unpack_from(run, 8)
    if code == KVM_EXIT_IO:
        length = size * count
        fields = {
            "direction": "out" if direction == KVM_EXIT_IO_OUT else "in",
            "port": port,
            "size": size,
            "count": count,
            # one byte (an 8-bit out or in) is read as an item, not through a slice
            "data": _BYTES[run[data_offset]]
            if length == 1
            else run[data_offset : data_offset + length].tobytes(),
        }
        return _new_exit(Exit, ("IO", code, fields))
    reason = _SHORT_NAMES.get(code) or f"UNKNOWN_{code}"
    if code == KVM_EXIT_MMIO:
        gpa, data, length, is_write = _MMIO.unpack_from(run, _UNION)
        fields = {"gpa": gpa, "len": length, "is_write": bool(is_write), "data": data[:length]}
    elif code == KVM_EXIT_HYPERCALL:
        nr, *rest = _HYPERCALL.unpack_from(run, _UNION)
        fields = {"nr": nr, "args": tuple(rest[:6]), "flags": rest[7]}
    elif code == KVM_EXIT_MEMORY_FAULT:
        flags, gpa, size = _MEMORY_FAULT.unpack_from(run, _UNION)
        fields = {"flags": flags, "gpa": gpa, "size": size}
    elif code == KVM_EXIT_INTERNAL_ERROR:
        suberror, ndata, *data = _INTERNAL.unpack_from(run, _UNION)
        fields = {"suberror": suberror, "data": tuple(data[: min(ndata, 16)])}
    elif code == KVM_EXIT_FAIL_ENTRY:
        fields = {"reason": _FAIL_ENTRY.unpack_from(run, _UNION)[0]}
    else:
        fields = {}
    return _new_exit(Exit, (reason, code, fields))


def memory_fault(run: memoryview) -> MemoryFault | None:
    """The :class:`MemoryFault` that an ``EFAULT`` from ``KVM_RUN`` carries, if any."""
    if _EXIT_REASON.unpack_from(run, 8)[0] != KVM_EXIT_MEMORY_FAULT:
        return None
    flags, gpa, size = _MEMORY_FAULT.unpack_from(run, _UNION)
    return MemoryFault(gpa, size, flags)


class Vcpu:
    """A vCPU fd and its shared ``kvm_run`` mapping; closed by its VM."""

    def __init__(self, vm: Vm, fd: int, vcpu_id: int, mmap_size: int) -> None:
        self.vm = vm
        self.fd = fd
        self.id = vcpu_id
        self.run_size = mmap_size
        self.run_address = syscalls.mmap(
            mmap_size, syscalls.PROT_READ | syscalls.PROT_WRITE, syscalls.MAP_SHARED, fd
        )
        self.run_struct = KvmRun.from_address(self.run_address)
        self.run_view = memoryview((ctypes.c_char * mmap_size).from_address(self.run_address)).cast("B")

    def close(self) -> None:
        if self.fd >= 0:
            watchdog.disarm()
            self.run_view.release()
            del self.run_struct
            syscalls.munmap(self.run_address, self.run_size)
            syscalls.close(self.fd)
            self.fd = -1

    # --- registers -------------------------------------------------------------------------
    def get_regs(self) -> KvmRegs:
        regs = KvmRegs()
        syscalls.ioctl(self.fd, KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: KvmRegs) -> None:
        syscalls.ioctl(self.fd, KVM_SET_REGS, regs)

    def get_sregs(self) -> KvmSregs:
        sregs = KvmSregs()
        syscalls.ioctl(self.fd, KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: KvmSregs) -> None:
        syscalls.ioctl(self.fd, KVM_SET_SREGS, sregs)

    def set_cpuid2(self, cpuid: bytearray) -> None:
        syscalls.ioctl(self.fd, KVM_SET_CPUID2, cpuid)

    # --- running -----------------------------------------------------------------------------
    def run(self, limit: float | None = RUN_LIMIT) -> Exit:
        """``KVM_RUN`` until an exit to userspace; ``limit`` seconds at most (None: no limit,
        for callers that bound the guest otherwise). Only the main thread may give a limit.

        Raises :class:`MemoryFault` (``EFAULT`` with ``KVM_EXIT_MEMORY_FAULT``),
        :class:`GuestTimeout`, or :class:`IoctlError` for other failures. ``EINTR`` from a
        signal that is not the time limit re-enters the guest.
        """
        fd = self.fd
        dog = None if limit is None else watchdog.start(self.run_struct, limit)
        try:
            while True:
                try:
                    _raw_ioctl(fd, KVM_RUN)
                    break
                except OSError as err:
                    self._interrupted(err, dog, limit)
        finally:
            if dog is not None:
                dog.running = None
        return decode_exit(self.run_view)

    def _interrupted(self, err: OSError, dog: watchdog.Watchdog | None, limit: float | None) -> None:
        """``KVM_RUN`` failed with ``err``: return to re-enter the guest, or raise."""
        if err.errno == errno.EINTR:
            # immediate_exit is the watchdog's (and set only past a deadline): clear it
            # for the next entry, whether this run timed out or an earlier one's stop
            # came after that run had already exited
            self.run_struct.immediate_exit = 0
            if dog is not None and time.monotonic() >= dog.deadline:
                assert limit is not None
                raise GuestTimeout(limit) from None
            return
        if err.errno == errno.EFAULT:
            fault = memory_fault(self.run_view)
            if fault is not None:
                raise fault from None
        raise syscalls.failure(err, KVM_RUN) from None

    def complete_pending(self, limit: int = 1 << 16) -> None:
        """Finish what KVM still expects userspace to complete (an IO or MMIO access, and
        the rest of an emulated instruction that makes more) without entering the guest:
        ``KVM_RUN`` with ``immediate_exit`` set (api.rst §5, ``immediate_exit``) until it
        answers ``EINTR``, each exit it returns meanwhile left unanswered."""
        self.run_struct.immediate_exit = 1
        try:
            for _ in range(limit):
                try:
                    syscalls.ioctl(self.fd, KVM_RUN)
                except IoctlError as err:
                    if err.code == errno.EINTR:
                        return
                    if err.code != errno.EFAULT:
                        raise
            raise IoctlError(errno.EBUSY, "KVM_RUN (completing pending exits)")
        finally:
            self.run_struct.immediate_exit = 0

    def set_hypercall_ret(self, value: int) -> None:
        """The value the guest's hypercall returns when it is re-entered (docs/semantics.md §9)."""
        self.run_struct.hypercall.ret = value & ((1 << 64) - 1)

    # --- statistics --------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """The vCPU's binary stats (``KVM_GET_STATS_FD``, api.rst §4.133): name → first value."""
        fd = syscalls.ioctl(self.fd, KVM_GET_STATS_FD)
        try:
            return read_stats(fd)
        finally:
            os.close(fd)


def read_stats(fd: int) -> dict[str, int]:
    """Parse a KVM binary stats fd: header, descriptors, then u64 data."""
    header = os.pread(fd, 24, 0)
    _flags, name_size, num_desc, _id_offset, desc_offset, data_offset = struct.unpack("<6I", header)
    desc_size = 16 + name_size
    descs = os.pread(fd, desc_size * num_desc, desc_offset)
    out: dict[str, int] = {}
    for i in range(num_desc):
        raw = descs[i * desc_size : (i + 1) * desc_size]
        _dflags, _exponent, size, offset, _bucket = struct.unpack_from("<IhHII", raw)
        name = raw[16:].split(b"\0", 1)[0].decode()
        if size:
            (out[name],) = struct.unpack("<Q", os.pread(fd, 8, data_offset + offset))
    return out
