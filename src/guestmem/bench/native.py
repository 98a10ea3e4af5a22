"""The kernel side of the benchmarks: hole punching, shared files, the C baseline program.

guest_memfd comes from :mod:`guestmem.kvm`; where the kernel makes none (no usable
``/dev/kvm``, no guest_memfd, no ``MMAP``/``INIT_SHARED``) the figure that needs it is
skipped with the reason (docs/bench.md *Exit status*).
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


class Unmeasurable(Exception):
    """A figure cannot be measured on this machine; the message is the reason."""


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
    del anchor  # kvm-here.md §10 pitfall 4: no exported buffer may outlive close()
    return SharedFile(fd, size, kind, mapping, address)


def guest_memfd_file(size: int) -> SharedFile:
    """A real guest_memfd (``MMAP | INIT_SHARED``) of ``size`` bytes, mapped shared.

    Raises :class:`Unmeasurable` with the probe's reason where the kernel makes none."""
    try:
        from guestmem.kvm import facts
        from guestmem.kvm.system import DEVICE, Kvm
    except ImportError as err:
        raise Unmeasurable(f"guestmem.kvm bindings unavailable ({err})") from None
    found = facts.cached(DEVICE)
    for feature in ("kvm", "guest_memfd", "guest_memfd_mmap", "guest_memfd_init_shared"):
        why = found.lacks(feature)
        if why is not None:
            raise Unmeasurable(f"needs a guest_memfd: {why}")
    with Kvm() as kvm, kvm.create_vm() as vm:
        gmem = vm.create_guest_memfd(size, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED)
        fd = os.dup(gmem.fd)
        gmem.close()  # the dup keeps the file, and the file keeps the VM (kvm-here.md §10 item 7)
    return _map(fd, size, "guest_memfd")


# --- the C baseline of KVM_RUN --------------------------------------------------------------------
@dataclass
class CLoop:
    """The compiled ``kvm_loop`` program; ``run`` returns seconds per round trip."""

    path: Path
    code: bytes
    port: int
    load: int
    #: The memslot's memory: ``guest_memfd`` or ``anonymous`` (kvm_loop.c's MEMORY).
    memory: str

    def run(self, rounds: int) -> tuple[float, str]:
        argv = [str(self.path), str(rounds), self.code.hex(), hex(self.port), hex(self.load), self.memory]
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
