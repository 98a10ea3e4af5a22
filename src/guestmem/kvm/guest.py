"""The tiny guest: one 64-bit program whose work is given as data, as in KVM selftests.

The host writes a command into a mailbox in guest low memory and runs the vCPU; the
guest performs it and reports back with ``out`` to :data:`PORT_DONE`:

* ``COPY``: ``rep movsq`` then ``rep movsb`` from ``src`` to ``dst``. Reads copy guest
  memory into a bounce page that the host then reads; writes go the other way. The
  host issues one command per page, in ascending order, so an access that faults stops
  at the faulting page with the earlier pages done (the ``Machine`` contract).
* ``HYPERCALL``: ``vmcall`` with ``rax`` = ``nr`` and ``rbx``/``rcx``/``rdx`` = arguments;
  the result ``rax`` is stored back into the mailbox (docs/semantics.md §9).
* ``SPIN``: loop forever, to exercise the time limit. Any other value: ``hlt``.

Layout (guest physical = guest virtual, long mode, kvm-here.md §5): code at 0x1000, mailbox
at 0x3000, the PML4 at 0x10000, the low page directory at 0x11000, up to :data:`MAX_PDPTS`
PDPTs from 0x12000, bounce page at 1 MiB, all inside a 2 MiB anonymous slot at GPA 0. The
window (the guest_memfd, at 4 GiB) is mapped whole by 2 MiB pages, which every x86-64 CPU
offers (1 GiB pages are not offered to guests under shadow paging): its page directories,
4 KiB per GiB of window, fill an anonymous slot of their own at :data:`TABLES_GPA`, so a
1 TiB window costs 4 MiB and a guest reaches any page of the guest_memfd (up to
:data:`MAX_WINDOW`, past the largest memslot).
"""

from __future__ import annotations

import array
import ctypes
from typing import Final

from guestmem.kvm import syscalls
from guestmem.kvm.vcpu import Exit, UnexpectedExit, Vcpu
from guestmem.kvm.vm import Vm
from guestmem.uapi.kvm import KVM_EXIT_HYPERCALL, KVM_EXIT_IO, PAGE_SIZE, KvmRegs, KvmSegment

LOW_SLOT: Final = 0
LOW_SIZE: Final = 2 << 20
CODE: Final = 0x1000
MAILBOX: Final = 0x3000
PML4: Final = 0x10000
PD_LOW: Final = 0x11000
PDPT: Final = 0x12000
#: PDPT pages (one per 512 GiB of guest physical addresses, from 0).
MAX_PDPTS: Final = 64
BOUNCE: Final = 0x100000
#: The window's page directories: their own anonymous memslot, below the window.
TABLES_SLOT: Final = 15
TABLES_GPA: Final = 1 << 30
#: The end of the guest physical addresses the page tables can reach (32 TiB).
MAX_WINDOW: Final = MAX_PDPTS << 39
PORT_DONE: Final = 0x10
#: Default time limit for one command, in seconds.
LIMIT: Final = 10.0

OP_HALT, OP_COPY, OP_HYPERCALL, OP_SPIN = 0, 1, 2, 3
# Mailbox words: op, src, dst, count8, count1, a0, a1, a2, result.
_SRC, _DST, _COUNT8, _COUNT1, _A0, _A1, _A2, _RESULT = range(1, 9)

#: The program, assembled from (Intel syntax, at CODE):
#:   top:   mov rax,[0x3000]; cmp rax,1; je copy; cmp rax,2; je hcall; cmp rax,3; je spin
#:          hlt; jmp top
#:   copy:  mov rsi,[0x3008]; mov rdi,[0x3010]; mov rcx,[0x3018]; rep movsq
#:          mov rcx,[0x3020]; rep movsb; out 0x10,al; jmp top
#:   hcall: mov rbx,[0x3028]; mov rcx,[0x3030]; mov rdx,[0x3038]; mov rax,12; vmcall
#:          mov [0x3040],rax; out 0x10,al; jmp top
#:   spin:  jmp spin
PROGRAM: Final = bytes.fromhex(
    "488b0425003000004883f801740f4883f80274324883f803745af4ebe3"
    "488b342508300000488b3c2510300000488b0c2518300000f348a5"
    "488b0c2520300000f3a4e610ebba"
    "488b1c2528300000488b0c2530300000488b14253830000048c7c00c000000"
    "0f01c14889042540300000e610eb8c"
    "ebfe"
)
#: Instructions one empty COPY command executes (top..out), for the emulation probe.
EMPTY_COPY_INSNS: Final = 10

_PTE_PRESENT_RW: Final = 0x3
_PTE_LARGE: Final = 0x80
_CR0_PE, _CR0_ET, _CR0_NE, _CR0_WP, _CR0_PG = 1, 1 << 4, 1 << 5, 1 << 16, 1 << 31
_CR4_PAE: Final = 1 << 5
_EFER_LME, _EFER_LMA = 1 << 8, 1 << 10


class TinyGuest:
    """The program loaded into ``vm`` with guest physical ``[window_gpa, +window_size)``
    mapped for it. The window must be 1 GiB aligned, at least 2 GiB up (above the page
    directories' slot) and end by :data:`MAX_WINDOW`."""

    def __init__(self, vm: Vm, window_gpa: int, window_size: int, *, limit: float = LIMIT) -> None:
        if window_gpa % (1 << 30) or window_gpa < 2 << 30:
            raise ValueError(f"window gpa {window_gpa:#x} must be 1 GiB aligned and at least 2 GiB up")
        if window_size <= 0 or window_gpa + window_size > MAX_WINDOW:
            raise ValueError(f"window of {window_size:#x} bytes at {window_gpa:#x} is too large to map")
        self.vm = vm
        self.window_gpa = window_gpa
        self.window_size = window_size
        self.limit = limit
        gib = -(-window_size // (1 << 30))
        self.tables_size = gib * PAGE_SIZE
        self.low = syscalls.anonymous(LOW_SIZE)
        self.tables = 0
        try:
            self.tables = syscalls.anonymous(self.tables_size)
            self._load(gib)
            vm.set_user_memory_region(LOW_SLOT, 0, LOW_SIZE, self.low)
            vm.set_user_memory_region(TABLES_SLOT, TABLES_GPA, self.tables_size, self.tables)
        except BaseException:
            self._unmap()
            raise
        self.mailbox = (ctypes.c_uint64 * 9).from_address(self.low + MAILBOX)
        self._cpuid = vm.kvm.supported_cpuid()
        self.vcpu = self._new_vcpu()
        self.fresh = True

    def close(self) -> None:
        """Unmap guest low memory and the page directories (the VM closes the vCPUs; close
        the VM first)."""
        if self.low:
            del self.mailbox
        self._unmap()

    def _unmap(self) -> None:
        if self.low:
            syscalls.munmap(self.low, LOW_SIZE)
            self.low = 0
        if self.tables:
            syscalls.munmap(self.tables, self.tables_size)
            self.tables = 0

    # --- setup ------------------------------------------------------------------------------
    def _poke(self, gpa: int, data: bytes) -> None:
        ctypes.memmove(self.low + gpa, data, len(data))

    def _load(self, gib: int) -> None:
        """The program and the page tables: the low 2 MiB, then ``gib`` GiB of window in
        2 MiB pages, one page directory per GiB in the tables' slot."""
        self._poke(CODE, PROGRAM)
        first = self.window_gpa >> 30
        pdpts = array.array("Q", bytes(8 * 512 * -(-(first + gib) // 512)))  # the PDPT pages used
        pml4 = array.array("Q", range(PDPT | _PTE_PRESENT_RW, PDPT + len(pdpts) * 8, PAGE_SIZE))
        self._poke(PML4, pml4.tobytes())
        pdpts[0] = PD_LOW | _PTE_PRESENT_RW
        self._poke(PD_LOW, (_PTE_PRESENT_RW | _PTE_LARGE).to_bytes(8, "little"))
        pdpts[first : first + gib] = array.array(
            "Q", range(TABLES_GPA | _PTE_PRESENT_RW, TABLES_GPA + gib * PAGE_SIZE, PAGE_SIZE)
        )
        self._poke(PDPT, pdpts.tobytes())
        flags = _PTE_PRESENT_RW | _PTE_LARGE
        pds = array.array("Q", range(self.window_gpa | flags, (first + gib) << 30, 1 << 21))
        ctypes.memmove(self.tables, pds.buffer_info()[0], len(pds) * 8)

    def _new_vcpu(self) -> Vcpu:
        vcpu = self.vm.create_vcpu(len(self.vm.vcpus))
        vcpu.set_cpuid2(self._cpuid)
        self._reset(vcpu)
        return vcpu

    def _reset(self, vcpu: Vcpu) -> None:
        """Long mode, flat segments, ``rip`` at the program's top."""
        sregs = vcpu.get_sregs()
        code = KvmSegment(
            base=0, limit=0xFFFFFFFF, selector=8, type=11, present=1, dpl=0, db=0, s=1, l=1, g=1
        )
        data = KvmSegment(
            base=0, limit=0xFFFFFFFF, selector=16, type=3, present=1, dpl=0, db=1, s=1, l=0, g=1
        )
        sregs.cs = code
        sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
        sregs.cr0 = _CR0_PE | _CR0_ET | _CR0_NE | _CR0_WP | _CR0_PG
        sregs.cr3 = PML4
        sregs.cr4 = _CR4_PAE
        sregs.efer = _EFER_LME | _EFER_LMA
        vcpu.set_sregs(sregs)
        vcpu.set_regs(KvmRegs(rip=CODE, rflags=0x2))

    # --- commands -----------------------------------------------------------------------------
    def _run(self, op: int, **words: int) -> Exit:
        mailbox = self.mailbox
        mailbox[0] = op
        for index, value in words.items():
            mailbox[int(index[1:])] = value & ((1 << 64) - 1)
        try:
            exit_ = self.vcpu.run(self.limit)
        except BaseException:
            self._discard()
            raise
        return exit_

    def _discard(self) -> None:
        """The vCPU stopped mid-program (timeout, fault, unexpected exit): finish what
        KVM left pending and start the program again on the same vCPU. KVM frees a vCPU
        only with its VM, so a new one per stop would run out of vCPU ids."""
        self.vcpu.complete_pending()
        self._reset(self.vcpu)

    def _done(self, exit_: Exit) -> None:
        if exit_.code != KVM_EXIT_IO or exit_.fields["port"] != PORT_DONE:
            self._discard()
            raise UnexpectedExit(exit_)

    def copy(self, src: int, dst: int, size: int) -> None:
        """One COPY command of ``size`` bytes (at most a page, the bounce page's size)."""
        if not 0 <= size <= PAGE_SIZE:
            raise ValueError(f"one copy moves at most {PAGE_SIZE} bytes, not {size}")
        self._done(self._run(OP_COPY, w1=src, w2=dst, w3=size // 8, w4=size % 8))

    def _check_window(self, gpa: int, size: int) -> None:
        if size < 0 or gpa < self.window_gpa or gpa + size > self.window_gpa + self.window_size:
            raise ValueError(
                f"guest access [{gpa:#x}, +{size:#x}) is outside the window "
                f"[{self.window_gpa:#x}, +{self.window_size:#x})"
            )

    def read(self, gpa: int, size: int) -> bytes:
        """The guest reads ``size`` bytes at ``gpa``, page by page in ascending order."""
        self._check_window(gpa, size)
        out = bytearray()
        for start, length in _pages(gpa, size):
            self.copy(start, BOUNCE, length)
            out += ctypes.string_at(self.low + BOUNCE, length)
        return bytes(out)

    def write(self, gpa: int, data: bytes) -> None:
        """The guest writes ``data`` at ``gpa``, page by page in ascending order."""
        self._check_window(gpa, len(data))
        pos = 0
        for start, length in _pages(gpa, len(data)):
            self._poke(BOUNCE, data[pos : pos + length])
            self.copy(BOUNCE, start, length)
            pos += length

    def hypercall(self, nr: int, a0: int = 0, a1: int = 0, a2: int = 0) -> Exit | None:
        """Issue hypercall ``nr``. Returns the ``KVM_EXIT_HYPERCALL`` record when KVM hands
        it to userspace (answer with :meth:`complete_hypercall`), or None when KVM answered
        it in the kernel (the result is then in :meth:`hypercall_result`)."""
        if nr != 12:
            raise ValueError("the program issues hypercall 12 (KVM_HC_MAP_GPA_RANGE) only")
        exit_ = self._run(OP_HYPERCALL, w5=a0, w6=a1, w7=a2)
        if exit_.code == KVM_EXIT_HYPERCALL:
            return exit_
        self._done(exit_)
        return None

    def complete_hypercall(self, ret: int) -> None:
        """Re-enter the guest with the hypercall returning ``ret``."""
        self.vcpu.set_hypercall_ret(ret)
        try:
            exit_ = self.vcpu.run(self.limit)
        except BaseException:
            self._discard()
            raise
        self._done(exit_)

    def hypercall_result(self) -> int:
        """``rax`` after the last hypercall, as a signed value."""
        value = int(self.mailbox[_RESULT])
        return value - (1 << 64) if value >= 1 << 63 else value

    def halt(self) -> Exit:
        """Run to ``hlt``; returns the ``KVM_EXIT_HLT`` record."""
        return self._run(OP_HALT)

    def spin(self, limit: float) -> Exit:
        """Loop forever: the vCPU is stopped after ``limit`` seconds (raises ``GuestTimeout``)."""
        old, self.limit = self.limit, limit
        try:
            return self._run(OP_SPIN)
        finally:
            self.limit = old


def _pages(gpa: int, size: int) -> list[tuple[int, int]]:
    """``(start, length)`` per page touched by ``[gpa, gpa+size)``, ascending."""
    out = []
    end = gpa + size
    while gpa < end:
        length = min(PAGE_SIZE - gpa % PAGE_SIZE, end - gpa)
        out.append((gpa, length))
        gpa += length
    return out
