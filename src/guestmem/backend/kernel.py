"""The kernel backend: :class:`~guestmem.backend.base.Machine` over a real ``/dev/kvm``.

One VM of the platform's type, one guest_memfd bound by ``KVM_SET_USER_MEMORY_REGION2``
at :data:`~guestmem.model.vm.GPA_BASE`, a host mapping whose accesses run in a helper
process (``SIGBUS`` → ``Outcome(signal="SIGBUS")``), and the tiny guest program for guest
accesses. What this kernel cannot do is reported as skipped with the reason found by
:mod:`guestmem.kvm.facts`, never as passed: conversions without the ioctl (``ENOTTY``),
pins without ``CONFIG_GUP_TEST``, guest requests when the guest's hypercall does not
reach userspace, private guest accesses on a VM type that has no private memory here.
A kernel without guest_memfd (or without the ``MMAP``/``INIT_SHARED`` flag a scenario asks
for) cannot run a scenario at all: :meth:`KernelBackend.open` raises ``Unavailable`` with
the probe's reason, and the run is skipped.

The guest program maps the whole guest_memfd, so a guest access reaches any page of it, as
a real guest's would; whether the access lies in the file is the one check both backends
make (:func:`~guestmem.backend.base.check_guest_range`).

On ``sw_protected`` KVM takes the side of a guest access from the page's attribute
(``kvm_mmu_page_fault`` sets ``PFERR_PRIVATE_ACCESS`` from ``kvm_mem_is_private``): the
guest cannot name the other side, so a scenario step that does is skipped with that reason.
The backend knows each page's attribute by mirroring the conversions the kernel accepted.
Launch mirrors the model's bookkeeping (docs/semantics.md §3 *Launch*): the
default VM has no launch ioctl, so the first ``launch`` succeeds and a second is ``EINVAL``.
"""

from __future__ import annotations

import errno
import threading
import time

from guestmem.backend.base import (
    Outcome,
    PageViews,
    Unavailable,
    attributes2,
    check_guest_range,
    outcome_of,
)
from guestmem.backend.model import hypercall_exit
from guestmem.errors import IoctlError
from guestmem.kvm import facts as kernel_facts
from guestmem.kvm import pins
from guestmem.kvm.gmem import GuestMemfd, Mapping
from guestmem.kvm.guest import LIMIT, TinyGuest
from guestmem.kvm.hostaccess import HostAccess
from guestmem.kvm.system import DEVICE, Kvm, KvmUnavailable
from guestmem.kvm.vm import Vm
from guestmem.model.rangemap import RangeMap
from guestmem.model.vm import GPA_BASE
from guestmem.spec import platforms
from guestmem.spec.terms import Direction, Phase
from guestmem.uapi.kvm import (
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
    KVM_CAP_EXIT_HYPERCALL,
    KVM_HC_MAP_GPA_RANGE,
    KVM_MAP_GPA_RANGE_DECRYPTED,
    KVM_MAP_GPA_RANGE_ENCRYPTED,
    PAGE_SIZE,
)

GMEM_SLOT = 1
#: The host mapping reaches this far past the end of the file, so that accesses past
#: the end are answered by the kernel (``SIGBUS``) rather than by a missing mapping.
HOST_SLACK = 64 * PAGE_SIZE
#: ``KVM_MEM_MAX_NR_PAGES``: the most pages one memslot may hold (``EINVAL`` beyond).
MEMSLOT_MAX_PAGES = (1 << 31) - 1
#: Kernel memory a memslot costs per 4 KiB page (its reverse-map entry), not seen in RSS.
SLOT_BYTES_PER_PAGE = 8
#: The share of ``MemAvailable`` one scenario's memslot may take.
MEMORY_SHARE = 8


class KernelMachine:
    """One real VM, guest_memfd, host mapping (with ``MMAP``) and tiny guest; it owns
    ``kvm`` (the guest program needs it for CPUID and vCPU setup) and closes it."""

    backend = "kvm"

    def __init__(self, kvm: Kvm, facts: kernel_facts.Facts, platform: str, abi: str, size: int, flags: int):
        spec = platforms.get(platform)
        assert spec.vm_type is not None
        self.kvm = kvm
        self.facts = facts
        self.platform = spec.name
        self.abi = abi
        self.size = size
        self.gpa_base = GPA_BASE
        self.deadline: float | None = None
        self.phase = Phase.PRE_LAUNCH
        self.mapping: Mapping | None = None
        self.host: HostAccess | None = None
        #: Other host processes' mappings (``mapping=1``): each a helper forked at first use.
        self.others: dict[int, HostAccess] = {}
        self.mmap_error: IoctlError | None = None
        self.guest: TinyGuest | None = None
        self.pinned: dict[tuple[int, int], pins.Pin] = {}
        self.private_memory = facts.private_memory(spec.name)
        #: Private pages (1) as runs, mirrored from creation flags and accepted conversions:
        #: it costs what the conversions cost, never what the file's size does.
        initial = int(self.private_memory and not flags & GUEST_MEMFD_FLAG_INIT_SHARED)
        self.private = RangeMap(size // PAGE_SIZE, initial)
        #: Guards ``private`` and the lazily made helpers, for callers that use one machine
        #: from several threads (``guestmem stress``: each thread on its own pages).
        self.book = threading.Lock()
        self.vm: Vm = kvm.create_vm(spec.vm_type)
        self.gmem: GuestMemfd | None = None
        try:
            self.gmem = self.vm.create_guest_memfd(size, flags)
            try:
                self.mapping = self.gmem.mmap(size + HOST_SLACK)
                self.host = HostAccess(self.mapping, size)
            except IoctlError as err:
                self.mmap_error = err
            address = self.mapping.address if self.mapping is not None else 0
            self.vm.set_user_memory_region2(GMEM_SLOT, GPA_BASE, size, address, gmem=self.gmem)
            self.hypercalls = bool(facts.hypercall_exit.get("works"))
            if self.hypercalls:
                self.vm.enable_cap(KVM_CAP_EXIT_HYPERCALL, 1 << KVM_HC_MAP_GPA_RANGE)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for pin in self.pinned.values():
            pin.release()
        self.pinned.clear()
        for other in self.others.values():
            other.close()
        if self.host is not None:
            self.host.close()
        self.vm.close()
        if self.guest is not None:
            self.guest.close()
        if self.mapping is not None:
            self.mapping.close()
        if self.gmem is not None:
            self.gmem.close()
        self.kvm.close()

    def observe(self, limit: int | None = None) -> PageViews | None:
        """A real guest_memfd's pages cannot be seen from outside: None."""
        return None

    def check_extension(self, cap: int) -> int:
        """``KVM_CHECK_EXTENSION`` on this VM's fd (the model answers the same call)."""
        return self.vm.check_extension(cap)

    def __enter__(self) -> KernelMachine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- host side ------------------------------------------------------------------------
    def _host(self, which: int = 0) -> HostAccess:
        if self.host is None or self.mapping is None:
            assert self.mmap_error is not None
            raise self.mmap_error
        if not which:
            return self.host
        with self.book:
            if which not in self.others:  # another process: its own page tables, same file
                self.others[which] = HostAccess(self.mapping, self.size)
            return self.others[which]

    def host_write(self, offset: int, data: bytes, mapping: int = 0) -> Outcome:
        return outcome_of(lambda: self._host(mapping).write(offset, data))

    def host_read(self, offset: int, size: int, mapping: int = 0) -> Outcome:
        return outcome_of(lambda: self._host(mapping).read(offset, size))

    # --- guest side -----------------------------------------------------------------------
    def _guest_skip(self, access: str | None, offset: int, size: int) -> str | None:
        if access not in (None, "private", "shared"):
            raise ValueError(f"access must be 'private', 'shared' or None, not {access!r}")
        if access == "private" and not self.private_memory:
            found = self.facts.vm_type_facts.get(self.platform, {}).get("to_private", "not probed")
            return (
                f"a {self.platform} VM has no private memory on this kernel (a to-private conversion "
                f"of a fresh guest_memfd: {found}): the guest cannot make a private access"
            )
        if access is not None and self.private_memory:
            first, last = offset // PAGE_SIZE, (offset + max(size, 1) - 1) // PAGE_SIZE
            with self.book:
                other = self.private.first_not(first, last + 1, int(access == "private"))
            if other is not None:
                return (
                    f"a {self.platform} guest cannot make a {access} access to a "
                    f"{'private' if self.private[other] else 'shared'} page: KVM takes the side "
                    "from the page's attribute (kvm_mmu_page_fault)"
                )
        if self.mapping is None and self.facts.emulated:
            return (
                "guest code is emulated here and reaches memory through the memslot's userspace_addr; "
                "a guest_memfd without GUEST_MEMFD_FLAG_MMAP has no host mapping to put there"
            )
        return None

    def _guest(self) -> TinyGuest:
        with self.book:
            if self.guest is None:
                self.guest = TinyGuest(self.vm, GPA_BASE, self.size)
        # one command may run until the run's deadline, and never longer than LIMIT
        left = LIMIT if self.deadline is None else self.deadline - time.monotonic()
        self.guest.limit = min(LIMIT, max(left, 0.001))
        return self.guest

    def _check_guest_range(self, offset: int, size: int) -> None:
        check_guest_range(offset, size, self.size)

    def guest_write(self, offset: int, data: bytes, access: str | None = None) -> Outcome:
        self._check_guest_range(offset, len(data))
        skip = self._guest_skip(access, offset, len(data))
        if skip:
            return Outcome(skipped=skip)
        return outcome_of(lambda: self._guest().write(GPA_BASE + offset, data))

    def guest_read(self, offset: int, size: int, access: str | None = None) -> Outcome:
        self._check_guest_range(offset, size)
        skip = self._guest_skip(access, offset, size)
        if skip:
            return Outcome(skipped=skip)
        return outcome_of(lambda: self._guest().read(GPA_BASE + offset, size))

    # --- guest_memfd operations -------------------------------------------------------------
    def convert(
        self,
        offset: int,
        size: int,
        attributes: int,
        flags: int = 0,
        *,
        reserved: tuple[int, ...] = (),
        error_offset_in: int = 0,
        mark: int | None = None,
    ) -> Outcome:
        """``KVM_SET_MEMORY_ATTRIBUTES2`` on the guest_memfd, raw; skipped without the ioctl.
        ``mark``: this thread's open ``make-it-fail``, set for the ioctl alone (fault
        injection, docs/stress.md)."""
        arg = attributes2(offset, size, attributes, flags, error_offset_in, reserved)
        skip = self.facts.conversion_skip_reason()
        if skip:
            return Outcome(skipped=skip)
        assert self.gmem is not None
        gmem = self.gmem
        outcome = outcome_of(lambda: gmem.set_memory_attributes2(arg, mark=mark))
        if outcome.ok:
            with self.book:
                end = min((offset + size) // PAGE_SIZE, self.private.limit)
                self.private.set(offset // PAGE_SIZE, end, int(bool(attributes)))
        return outcome

    def punch_hole(self, offset: int, size: int) -> Outcome:
        assert self.gmem is not None
        gmem = self.gmem
        return outcome_of(lambda: gmem.punch_hole(offset, size))

    def pin(self, offset: int, size: int) -> Outcome:
        skip = pins.unavailable_reason()
        if skip:
            return Outcome(skipped=skip)
        if self.pinned:
            return Outcome(skipped="gup_test holds one pinned range at a time")
        if offset < 0 or size <= 0 or offset % PAGE_SIZE or size % PAGE_SIZE:
            return Outcome(errno="EINVAL")
        mapping = self._mapping_or_efault(offset, size)

        def act() -> None:
            self.pinned[(offset, size)] = pins.Pin(mapping.address + offset, size)

        return outcome_of(act)

    def _mapping_or_efault(self, offset: int, size: int) -> Mapping:
        if self.mapping is None or offset + size > self.size:
            raise IoctlError(errno.EFAULT, "PIN_LONGTERM_TEST_START")
        return self.mapping

    def unpin(self, offset: int, size: int) -> Outcome:
        skip = pins.unavailable_reason()
        if skip:
            return Outcome(skipped=skip)
        pin = self.pinned.pop((offset, size), None)
        if pin is None:
            return Outcome(errno="EINVAL")
        return outcome_of(pin.release)

    def delete_memslot(self) -> Outcome:
        """``KVM_SET_USER_MEMORY_REGION2`` with size 0 on the guest_memfd's slot."""
        return outcome_of(lambda: self.vm.set_user_memory_region2(GMEM_SLOT, GPA_BASE, 0))

    def populate(self, offset: int, size: int, source: bytes | None = None) -> Outcome:
        """TDX's and SNP's launch ioctls need those VM types, which the kernels here lack:
        the step is skipped (docs/semantics.md §3 *Populate* is model-only)."""
        return Outcome(skipped="populate needs a TDX or SNP VM, which this kernel cannot create")

    def restore_memslot(self) -> Outcome:
        """The memslot again, as the machine made it (same GPA, host address and file)."""
        address = self.mapping.address if self.mapping is not None else 0
        gmem = self.gmem
        return outcome_of(
            lambda: self.vm.set_user_memory_region2(GMEM_SLOT, GPA_BASE, self.size, address, gmem=gmem)
        )

    def launch(self) -> Outcome:
        """The default VM has no launch ioctl: bookkeeping only, as the model does."""
        if self.phase is Phase.RUNNING:
            return Outcome(errno="EINVAL")
        self.phase = Phase.RUNNING
        return Outcome()

    def guest_request(self, offset: int, size: int, to: Direction) -> Outcome:
        """The guest issues ``KVM_HC_MAP_GPA_RANGE`` (docs/semantics.md §9); this VMM answers it.

        Skipped when the probe found that a guest hypercall does not reach userspace.
        """
        if not self.hypercalls:
            reason = self.facts.hypercall_exit.get("reason") or "no KVM_EXIT_HYPERCALL"
            return Outcome(skipped=f"guest requests need KVM_EXIT_HYPERCALL: {reason}")
        if offset < 0 or size <= 0 or size % PAGE_SIZE:
            return Outcome(errno="EINVAL")
        attributes = (
            KVM_MAP_GPA_RANGE_ENCRYPTED if to is Direction.TO_PRIVATE else KVM_MAP_GPA_RANGE_DECRYPTED
        )
        guest = self._guest()

        def act() -> None:
            exit_ = guest.hypercall(KVM_HC_MAP_GPA_RANGE, GPA_BASE + offset, size // PAGE_SIZE, attributes)
            if exit_ is None:
                raise IoctlError(-guest.hypercall_result(), "KVM_HC_MAP_GPA_RANGE")
            in_range = offset % PAGE_SIZE == 0 and offset + size <= self.size
            guest.complete_hypercall(0 if in_range else -errno.EINVAL)
            if not in_range:
                raise IoctlError(errno.EINVAL, "KVM_HC_MAP_GPA_RANGE")

        outcome = outcome_of(act)
        if outcome.ok:
            outcome.exit = hypercall_exit(GPA_BASE + offset, size, to)
        return outcome


class KernelBackend:
    """Opens :class:`KernelMachine` s on ``device``; one ``/dev/kvm`` fd per machine."""

    name = "kvm"

    def __init__(self, device: str = DEVICE) -> None:
        self.device = device

    def max_pages(self) -> tuple[int, str]:
        """What one memslot may hold (``KVM_MEM_MAX_NR_PAGES``), what the CPU's physical
        address width leaves above the window's base, and what this machine's memory allows:
        the memslot costs the kernel 8 bytes per page, held to an eighth of ``MemAvailable``."""
        limits = [(MEMSLOT_MAX_PAGES, f"a memslot holds at most {MEMSLOT_MAX_PAGES} pages")]
        bits = physical_address_bits()
        if bits is not None:
            pages = ((1 << bits) - GPA_BASE) // PAGE_SIZE
            limits.append((pages, f"the CPU's {bits}-bit physical addresses end there"))
        available = mem_available()
        if available is not None:
            pages = available // MEMORY_SHARE // SLOT_BYTES_PER_PAGE
            limits.append(
                (
                    pages,
                    f"the memslot costs the kernel {SLOT_BYTES_PER_PAGE} bytes per page, held to "
                    f"1/{MEMORY_SHARE} of MemAvailable ({available >> 20} MiB)",
                )
            )
        return min(limits)

    def open(self, platform: str, abi: str, size: int, flags: int) -> KernelMachine:
        """``Unavailable`` when ``/dev/kvm`` is unusable, the kernel has no guest_memfd or
        not a flag in ``flags``, or the platform's VM type is not offered
        (``KVM_CAP_VM_TYPES``), each with the probe's reason; ``IoctlError`` when guest_memfd
        creation fails otherwise."""
        spec = platforms.get(platform)
        facts = kernel_facts.cached(self.device)
        lacking = [("kvm", "no usable KVM"), ("guest_memfd", "no guest_memfd on this kernel")]
        if flags & GUEST_MEMFD_FLAG_MMAP:
            lacking.append(("guest_memfd_mmap", "no GUEST_MEMFD_FLAG_MMAP on this kernel"))
        if flags & GUEST_MEMFD_FLAG_INIT_SHARED:
            lacking.append(("guest_memfd_init_shared", "no GUEST_MEMFD_FLAG_INIT_SHARED on this kernel"))
        for feature, what in lacking:
            why = facts.lacks(feature)
            if why is not None:
                raise Unavailable(f"{what}: {why}")
        try:
            kvm = Kvm(self.device)
        except KvmUnavailable as err:
            raise Unavailable(str(err)) from None
        try:
            if spec.vm_type is None:
                raise Unavailable(f"{spec.name} is not an x86 VM type ({spec.title}); this kernel is x86 KVM")
            if not kvm.vm_types() & (1 << spec.vm_type):
                raise Unavailable(
                    f"{spec.name} needs VM type {spec.vm_type}; KVM_CAP_VM_TYPES = {kvm.vm_types():#x} "
                    f"({', '.join(facts.vm_types)})"
                )
            return KernelMachine(kvm, facts, spec.name, abi, size, flags)
        except BaseException:
            kvm.close()
            raise


def mem_available() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` in bytes (None where it cannot be read)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def physical_address_bits() -> int | None:
    """The CPU's physical address width from ``/proc/cpuinfo`` (None if not given)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("address sizes"):
                    return int(line.split(":")[1].split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return None
