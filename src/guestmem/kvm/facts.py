"""What this kernel offers for guest_memfd work, measured rather than assumed.

Everything comes from ioctls on a live ``/dev/kvm``: capabilities (docs/semantics.md §7), VM types,
guest_memfd flags, whether ``KVM_SET_MEMORY_ATTRIBUTES2`` exists (issued on a guest_memfd
and on a VM fd: ``ENOTTY`` means absent, docs/semantics.md §4 step 0), how guest code runs (the
vCPU's ``insn_emulation`` counter across a known number of guest instructions,
docs/kernel.md §1), whether a guest hypercall reaches userspace, and ``CONFIG_GUP_TEST``.
"""

from __future__ import annotations

import errno
import functools
from dataclasses import asdict, dataclass, field
from typing import Any

from guestmem.errors import GuestmemError, IoctlError, errno_name
from guestmem.kvm import pins
from guestmem.kvm.guest import BOUNCE, CODE, EMPTY_COPY_INSNS, TinyGuest
from guestmem.kvm.syscalls import try_ioctl
from guestmem.kvm.system import Kvm
from guestmem.kvm.vcpu import GuestTimeout
from guestmem.kvm.vm import Vm
from guestmem.uapi import kvm as uapi

#: The capabilities reported, by name (all upstream; docs/semantics.md §7, docs/kernel.md §2).
CAPABILITIES = (
    "KVM_CAP_USER_MEMORY2",
    "KVM_CAP_MEMORY_FAULT_INFO",
    "KVM_CAP_MEMORY_ATTRIBUTES",
    "KVM_CAP_GUEST_MEMFD",
    "KVM_CAP_VM_TYPES",
    "KVM_CAP_PRE_FAULT_MEMORY",
    "KVM_CAP_GUEST_MEMFD_FLAGS",
    "KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES",
    "KVM_CAP_MEMORY_ATTRIBUTES2_FLAGS",
    "KVM_CAP_EXIT_HYPERCALL",
    "KVM_CAP_IMMEDIATE_EXIT",
    "KVM_CAP_SYNC_REGS",
    "KVM_CAP_READONLY_MEM",
    "KVM_CAP_NR_MEMSLOTS",
    "KVM_CAP_MAX_VCPUS",
)
VM_TYPE_NAMES = {
    uapi.KVM_X86_DEFAULT_VM: "default",
    uapi.KVM_X86_SW_PROTECTED_VM: "sw_protected",
    uapi.KVM_X86_SEV_VM: "sev",
    uapi.KVM_X86_SEV_ES_VM: "sev_es",
    uapi.KVM_X86_SNP_VM: "snp",
    uapi.KVM_X86_TDX_VM: "tdx",
}
GMEM_FLAG_NAMES = {uapi.GUEST_MEMFD_FLAG_MMAP: "MMAP", uapi.GUEST_MEMFD_FLAG_INIT_SHARED: "INIT_SHARED"}
PROBE_GPA = 1 << 32
#: How long the hypercall probe waits for the guest's ``vmcall`` to reach userspace.
HYPERCALL_PROBE_LIMIT = 0.2


def bit_names(mask: int, names: dict[int, str], *, index: bool = False) -> list[str]:
    """Names of the set bits (``index``: bit *n* means key *n*, else key = the bit's value)."""
    out = []
    for bit in range(64):
        if mask & (1 << bit):
            key = bit if index else 1 << bit
            out.append(names.get(key, f"bit{bit}"))
    return out


@dataclass
class Facts:
    """The probe's findings; ``to_json`` gives ``guestmem probe --format json``."""

    device: str
    api_version: int
    vcpu_mmap_size: int
    capabilities: dict[str, int]
    proposed_capabilities: dict[int, int]
    vm_types: list[str]
    guest_memfd_flags: list[str]
    #: errno name of ``KVM_SET_MEMORY_ATTRIBUTES2`` with ``size = 0`` per fd kind, or "none".
    set_memory_attributes2: dict[str, str]
    conversion_ioctl: bool
    guest_code: dict[str, Any] = field(default_factory=dict)
    hypercall_exit: dict[str, Any] = field(default_factory=dict)
    gup_test: str | None = None
    #: Per VM type offered (by name): :func:`_vm_type_facts`.
    vm_type_facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The series this kernel implements, from what it answers (:func:`_series`), or None.
    series: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["proposed_capabilities"] = {str(k): v for k, v in self.proposed_capabilities.items()}
        return out

    def private_memory(self, vm_type: str) -> bool:
        """Whether a VM of ``vm_type`` has private memory here: the conversion ioctl turned
        one of its pages private (a VM without private memory answers ``EINVAL``)."""
        return bool(self.vm_type_facts.get(vm_type, {}).get("private_memory"))

    @property
    def emulated(self) -> bool:
        return self.guest_code.get("mode") == "emulated"

    def conversion_skip_reason(self) -> str | None:
        """Why conversions cannot run here, or None."""
        if self.conversion_ioctl:
            return None
        seen = self.set_memory_attributes2.get("guest_memfd", "?")
        return f"KVM_SET_MEMORY_ATTRIBUTES2: {seen} on the guest_memfd fd (no in-place conversion here)"


def _attributes2(vm: Vm) -> dict[str, str]:
    with vm.create_guest_memfd(uapi.PAGE_SIZE, uapi.GUEST_MEMFD_FLAG_MMAP) as gmem:
        on_gmem = gmem.conversion_errno()
    on_vm = try_ioctl(vm.fd, uapi.KVM_SET_MEMORY_ATTRIBUTES2, uapi.KvmMemoryAttributes2(size=0))
    return {
        "guest_memfd": errno_name(on_gmem) if on_gmem else "none",
        "vm": errno_name(on_vm) if on_vm else "none",
    }


def _vm_type_facts(kvm: Kvm, vm_type: int) -> dict[str, Any]:
    """One VM of ``vm_type``: the series' capabilities on its fd, and whether a page of a
    fresh ``MMAP | INIT_SHARED`` guest_memfd converts to private (``errno`` otherwise)."""
    with kvm.create_vm(vm_type) as vm:
        out: dict[str, Any] = {
            "memory_attributes": vm.check_extension(uapi.KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES),
            "attributes2_flags": vm.check_extension(uapi.KVM_CAP_MEMORY_ATTRIBUTES2_FLAGS),
        }
        flags = uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED
        try:
            gmem = vm.create_guest_memfd(uapi.PAGE_SIZE, flags)
        except IoctlError as err:
            out.update(private_memory=False, to_private=f"INIT_SHARED refused: {err.name}")
            return out
        with gmem:
            arg = uapi.KvmMemoryAttributes2(size=uapi.PAGE_SIZE, attributes=uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE)
            code = gmem.try_set_memory_attributes2(arg)
        out["private_memory"] = code == 0
        out["to_private"] = "ok" if code == 0 else errno_name(code)
        return out


def _series(facts: Facts) -> str | None:
    """``rfc-v5`` when a VM type takes content-mode flags (``KVM_CAP_MEMORY_ATTRIBUTES2_FLAGS``),
    ``v8`` when conversions work without them; None without the ioctl."""
    if not facts.conversion_ioctl:
        return None
    if any(v.get("attributes2_flags") for v in facts.vm_type_facts.values()):
        return "rfc-v5"
    return "v8"


def _with_guest(kvm: Kvm, enable_hypercall: bool = False) -> tuple[Vm, TinyGuest, Any, Any]:
    vm = kvm.create_vm()
    gmem = vm.create_guest_memfd(
        uapi.PAGE_SIZE, uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED
    )
    mapping = gmem.mmap()
    vm.set_user_memory_region2(1, PROBE_GPA, uapi.PAGE_SIZE, mapping.address, gmem=gmem)
    if enable_hypercall:
        vm.enable_cap(uapi.KVM_CAP_EXIT_HYPERCALL, 1 << uapi.KVM_HC_MAP_GPA_RANGE)
    return vm, TinyGuest(vm, PROBE_GPA, uapi.PAGE_SIZE), gmem, mapping


def _guest_code(kvm: Kvm) -> dict[str, Any]:
    """Run one empty COPY command and compare ``insn_emulation`` with its instruction count."""
    vm, guest, gmem, mapping = _with_guest(kvm)
    try:
        guest.halt()  # first entry: lets KVM finish vCPU setup outside the measurement
        before = guest.vcpu.stats().get("insn_emulation")
        guest.copy(CODE, BOUNCE, 0)
        after = guest.vcpu.stats().get("insn_emulation")
    finally:
        vm.close()
        guest.close()
        mapping.close()
        gmem.close()
    if before is None or after is None:
        return {"mode": "unknown", "reason": "the vCPU stats have no insn_emulation counter"}
    emulated = after - before
    mode = "emulated" if emulated >= EMPTY_COPY_INSNS else "native" if emulated == 0 else "partly emulated"
    return {"mode": mode, "instructions": EMPTY_COPY_INSNS, "insn_emulation": emulated}


def _hypercall_exit(kvm: Kvm, cap: int) -> dict[str, Any]:
    """Does a guest ``KVM_HC_MAP_GPA_RANGE`` reach userspace as ``KVM_EXIT_HYPERCALL``?"""
    if not cap & (1 << uapi.KVM_HC_MAP_GPA_RANGE):
        return {"works": False, "reason": f"KVM_CAP_EXIT_HYPERCALL = {cap:#x} lacks bit 12"}
    vm, guest, gmem, mapping = _with_guest(kvm, enable_hypercall=True)
    guest.limit = HYPERCALL_PROBE_LIMIT
    try:
        exit_ = guest.hypercall(uapi.KVM_HC_MAP_GPA_RANGE, PROBE_GPA, 1, uapi.KVM_MAP_GPA_RANGE_DECRYPTED)
        if exit_ is not None:
            guest.complete_hypercall(0)
            return {"works": True, "reason": None}
        return {
            "works": False,
            "reason": f"KVM answered the hypercall itself (rax={guest.hypercall_result()})",
        }
    except GuestTimeout:
        return {
            "works": False,
            "reason": f"the guest's vmcall never completed within {HYPERCALL_PROBE_LIMIT:g} s "
            "(KVM keeps re-emulating it; no KVM_EXIT_HYPERCALL)",
        }
    except GuestmemError as err:
        return {"works": False, "reason": f"the guest's vmcall failed: {err}"}
    finally:
        vm.close()
        guest.close()
        mapping.close()
        gmem.close()


def gather(kvm: Kvm, *, hypercall: bool = True) -> Facts:
    """Probe ``kvm``. ``hypercall=False`` skips the (up to 0.2 s) hypercall probe."""
    caps = {name: kvm.check_extension(getattr(uapi, name)) for name in CAPABILITIES}
    proposed = {cap: kvm.check_extension(cap) for cap in uapi.PROPOSED_CAP_RANGE}
    with kvm.create_vm() as vm:
        attributes2 = _attributes2(vm)
    facts = Facts(
        device=kvm.path,
        api_version=kvm.api_version(),
        vcpu_mmap_size=kvm.vcpu_mmap_size(),
        capabilities=caps,
        proposed_capabilities=proposed,
        vm_types=bit_names(kvm.vm_types(), VM_TYPE_NAMES, index=True),
        guest_memfd_flags=bit_names(caps["KVM_CAP_GUEST_MEMFD_FLAGS"], GMEM_FLAG_NAMES),
        set_memory_attributes2=attributes2,
        conversion_ioctl=attributes2["guest_memfd"] != errno_name(errno.ENOTTY),
        gup_test=pins.unavailable_reason(),
    )
    for vm_type in range(64):
        if kvm.vm_types() & (1 << vm_type):
            name = VM_TYPE_NAMES.get(vm_type, f"type{vm_type}")
            try:
                facts.vm_type_facts[name] = _vm_type_facts(kvm, vm_type)
            except IoctlError as err:
                facts.vm_type_facts[name] = {"private_memory": False, "error": str(err)}
    facts.series = _series(facts)
    try:
        facts.guest_code = _guest_code(kvm)
    except (GuestmemError, IoctlError) as err:
        facts.guest_code = {"mode": "unknown", "reason": str(err)}
    if hypercall:
        facts.hypercall_exit = _hypercall_exit(kvm, caps["KVM_CAP_EXIT_HYPERCALL"])
    return facts


@functools.cache
def cached(device: str) -> Facts:
    """:func:`gather` once per process and device (the backend asks on every ``open``)."""
    with Kvm(device) as kvm:
        return gather(kvm)
