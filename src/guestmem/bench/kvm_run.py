"""``KVM_RUN`` round trips from the Python bindings vs the same guest loop in C.

Both sides run the same real-mode guest, ``out 0x10, al; inc al; jmp`` at 0x1000, in a
default VM whose 2 MiB memslot is a guest_memfd (``MMAP | INIT_SHARED``) mapped at its
``userspace_addr`` (kvm-here.md §5, §9), or ordinary anonymous memory where the kernel has
no guest_memfd: the loop needs only ``KVM_RUN``, so it is measured on any usable
``/dev/kvm``. The Python side is :mod:`guestmem.kvm`
(``Vcpu.run`` with its default time limit, as every guest access runs, decoding every
exit); the C side is ``kvm_loop.c``, compiled here with the
system ``cc`` and handed the same code bytes. Each round trip is one ``KVM_RUN`` that
must come back with ``KVM_EXIT_IO`` on the port.
"""

from __future__ import annotations

import ctypes
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from guestmem.bench.figure import Figure
from guestmem.bench.native import CLoop, compile_kvm_loop
from guestmem.bench.timing import Side, interleaved, median
from guestmem.uapi.kvm import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, KvmRegs

PORT = 0x10
LOAD = 0x1000
#: ``out 0x10, al`` (E6 10); ``inc al`` (FE C0); ``jmp -6`` (EB FA): one exit per iteration.
OUT_LOOP = bytes.fromhex("e610fec0ebfa")
MEMORY = 2 << 20

if TYPE_CHECKING:
    from guestmem.kvm.vm import Vm


def guest_memory(vm: Vm) -> tuple[int, str, Callable[[], None]]:
    """Bind :data:`MEMORY` bytes at GPA 0 of ``vm``: a shared guest_memfd where the kernel
    makes one, else anonymous memory, as ``kvm_loop.c`` does. Returns the host address,
    the kind and what releases it."""
    from guestmem.errors import IoctlError
    from guestmem.kvm import syscalls

    try:
        gmem = vm.create_guest_memfd(MEMORY, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED)
    except IoctlError:
        address = syscalls.mmap(
            MEMORY, syscalls.PROT_READ | syscalls.PROT_WRITE, syscalls.MAP_SHARED | syscalls.MAP_ANONYMOUS
        )
        vm.set_user_memory_region(0, 0, MEMORY, address)
        return address, "anonymous", lambda: syscalls.munmap(address, MEMORY)
    mapping = gmem.mmap()

    def release() -> None:
        mapping.close()
        gmem.close()

    try:
        vm.set_user_memory_region2(0, 0, MEMORY, mapping.address, gmem=gmem)
    except BaseException:
        release()
        raise
    return mapping.address, "guest_memfd", release


def kvm_run_vs_c(reps: int, quick: bool) -> Figure:
    try:
        from guestmem.kvm.system import Kvm, unusable_reason
        from guestmem.kvm.vcpu import UnexpectedExit
    except ImportError as err:
        return Figure("kvm_run_vs_c", skipped=f"guestmem.kvm bindings unavailable ({err})")
    reason = unusable_reason()
    if reason is not None:
        return Figure("kvm_run_vs_c", skipped=reason)
    rounds = 2000 if quick else 20000
    with tempfile.TemporaryDirectory(prefix="guestmem-bench-") as tmp:
        exe, why = compile_kvm_loop(Path(tmp))
        if exe is None:
            return Figure("kvm_run_vs_c", skipped=why)
        with Kvm() as kvm, kvm.create_vm() as vm:
            address, memory, release = guest_memory(vm)
            c_loop = CLoop(exe, OUT_LOOP, PORT, LOAD, memory)

            def c_side() -> float:
                seconds, _ = c_loop.run(rounds)  # the program times its own loop only
                return seconds

            try:
                ctypes.memmove(address + LOAD, OUT_LOOP, len(OUT_LOOP))
                vcpu = vm.create_vcpu()
                sregs = vcpu.get_sregs()
                sregs.cs.base, sregs.cs.selector = 0, 0
                vcpu.set_sregs(sregs)
                vcpu.set_regs(KvmRegs(rip=LOAD, rflags=2))

                def python_side() -> None:
                    run = vcpu.run
                    for _ in range(rounds):
                        exit_ = run()
                        if exit_.reason != "IO" or exit_.fields["port"] != PORT:
                            raise UnexpectedExit(exit_)

                model, baseline = interleaved(Side(python_side, ops=rounds), Side(c_side), reps)
            finally:
                release()
    return Figure(
        "kvm_run_vs_c",
        model=median(model),
        baseline=median(baseline),
        note=f"real-mode out loop, {rounds} KVM_RUN round trips x {reps} reps; "
        f"Python guestmem.kvm Vcpu.run vs C (cc -O2), memslot on {memory}",
    )
