"""The kernel side of the benchmarks: hole punching, shared files, the C baseline program.

guest_memfd comes from :mod:`guestmem.kvm`; when ``/dev/kvm`` is unusable, a ``memfd``
(the same shmem-style page cache) stands in and the figure says so.
"""

from __future__ import annotations

import ctypes
import errno
import importlib.resources
import json
import mmap
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from guestmem.uapi.kvm import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
)


def punch_hole(fd: int, offset: int, length: int) -> None:
    """``fallocate(PUNCH_HOLE | KEEP_SIZE)`` (docs/semantics.md §3 *Punch hole*)."""
    from guestmem.kvm import syscalls

    syscalls.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)


@dataclass
class SharedFile:
    """A file of ``size`` bytes mapped ``MAP_SHARED`` at ``address``; ``kind`` names it."""

    fd: int
    size: int
    kind: str
    mapping: mmap.mmap
    address: int

    def fill(self, byte: int) -> None:
        """Write every page (faulting each one in)."""
        ctypes.memset(self.address, byte, self.size)

    def close(self) -> None:
        self.mapping.close()
        os.close(self.fd)


def _map(fd: int, size: int, kind: str) -> SharedFile:
    mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
    anchor = ctypes.c_char.from_buffer(mapping)
    address = ctypes.addressof(anchor)
    del anchor  # docs/kernel.md §10 item 4: no exported buffer may outlive close()
    return SharedFile(fd, size, kind, mapping, address)


def guest_memfd_file(size: int) -> tuple[SharedFile | None, str]:
    """A real guest_memfd (``MMAP | INIT_SHARED``) of ``size`` bytes, or None and the reason."""
    try:
        from guestmem.kvm.system import Kvm, KvmUnavailable
    except ImportError as err:
        return None, f"guestmem.kvm bindings unavailable ({err})"
    try:
        kvm = Kvm()
    except KvmUnavailable as err:
        return None, str(err)
    try:
        vm = kvm.create_vm()
        gmem = vm.create_guest_memfd(size, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED)
        fd = os.dup(gmem.fd)
    finally:
        kvm.close()
    gmem.close()  # the dup keeps the file, and the file keeps the VM (docs/kernel.md §10 item 7)
    vm.close()
    return _map(fd, size, "guest_memfd"), ""


def memfd_file(size: int) -> SharedFile:
    """An anonymous shmem file (``memfd_create``) of ``size`` bytes."""
    fd = os.memfd_create("guestmem-bench", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return _map(fd, size, "memfd")


def punchable_file(size: int) -> SharedFile:
    """A real guest_memfd when possible, else a memfd; ``kind`` says which (and why)."""
    gmem, reason = guest_memfd_file(size)
    if gmem is not None:
        return gmem
    f = memfd_file(size)
    f.kind = f"memfd (no guest_memfd: {reason})"
    return f


# --- the C baseline of KVM_RUN --------------------------------------------------------------------
@dataclass
class CLoop:
    """The compiled ``kvm_loop`` program; ``run`` returns seconds per round trip."""

    path: Path
    code: bytes
    port: int
    load: int

    def run(self, rounds: int) -> tuple[float, str]:
        argv = [str(self.path), str(rounds), self.code.hex(), hex(self.port), hex(self.load)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0:
            raise OSError(errno.EIO, f"kvm_loop failed ({proc.returncode}): {proc.stderr.strip()}")
        result = json.loads(proc.stdout)
        return result["ns"] / 1e9 / result["rounds"], str(result["memory"])


def compile_kvm_loop(workdir: Path) -> tuple[Path | None, str]:
    """Compile ``kvm_loop.c`` with the system compiler into ``workdir``: (path, "") or
    (None, reason)."""
    cc = os.environ.get("CC") or shutil.which("cc")
    if not cc:
        return None, "no C compiler (cc) on PATH"
    source = importlib.resources.files("guestmem.bench").joinpath("kvm_loop.c").read_text()
    src = workdir / "kvm_loop.c"
    src.write_text(source)
    exe = workdir / "kvm_loop"
    proc = subprocess.run(
        [cc, "-O2", "-o", str(exe), str(src)], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        return None, f"cc failed: {proc.stderr.strip()[:300]}"
    return exe, ""
