"""What this kernel offers for guest_memfd work, measured rather than assumed.

Everything comes from ioctls on a live ``/dev/kvm``: capabilities (docs/semantics.md §7), VM types,
guest_memfd flags, whether ``KVM_SET_MEMORY_ATTRIBUTES2`` exists (issued on a guest_memfd
and on a VM fd: ``ENOTTY`` means absent, docs/semantics.md §4 step 0), how guest code runs (the
vCPU's ``insn_emulation`` counter across a known number of guest instructions,
kvm-here.md §1), whether a guest hypercall reaches userspace, and ``CONFIG_GUP_TEST``.

A feature the kernel lacks is a finding, never an error: :func:`probe` always returns
:class:`Facts`, and :attr:`Facts.missing` names each absent feature (:data:`FEATURES`) with
the reason found — no ``/dev/kvm`` or no permission to open it, no guest_memfd, no
``MMAP``/``INIT_SHARED`` flag, no conversion ioctl, no ``KVM_X86_SW_PROTECTED_VM``, no
gup_test, no hypercall exit, guest code that cannot run.
"""

from __future__ import annotations

import errno
import functools
from dataclasses import asdict, dataclass, field
from typing import Any

from guestmem.errors import GuestmemError, IoctlError, errno_name
from guestmem.kvm import pins, syscalls
from guestmem.kvm.gmem import GuestMemfd, Mapping
from guestmem.kvm.guest import BOUNCE, CODE, EMPTY_COPY_INSNS, TinyGuest
from guestmem.kvm.syscalls import try_ioctl
from guestmem.kvm.system import DEVICE, Kvm, KvmUnavailable
from guestmem.kvm.vcpu import GuestTimeout
from guestmem.kvm.vm import Vm
from guestmem.uapi import kvm as uapi

#: The capabilities reported, by name (all upstream; docs/semantics.md §7, kvm-here.md §2).
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


#: The features a kernel may lack, each with what needs it (``Facts.missing`` keys).
FEATURES: dict[str, str] = {
    "kvm": "everything on the kernel: a /dev/kvm this process can open and create VMs on",
    "guest_memfd": "every scenario on the kernel (KVM_CREATE_GUEST_MEMFD)",
    "guest_memfd_mmap": "host accesses (GUEST_MEMFD_FLAG_MMAP)",
    "guest_memfd_init_shared": "guest_memfds created shared (GUEST_MEMFD_FLAG_INIT_SHARED)",
    "set_memory_attributes2": "conversions (KVM_SET_MEMORY_ATTRIBUTES2 on a guest_memfd)",
    "sw_protected_vm": "the sw_protected platform (KVM_X86_SW_PROTECTED_VM)",
    "gup_test": "pin and unpin steps (CONFIG_GUP_TEST)",
    "hypercall_exit": "guest requests (KVM_EXIT_HYPERCALL for KVM_HC_MAP_GPA_RANGE)",
    "guest_code": "guest accesses (the tiny guest program)",
}


@dataclass
class Facts:
    """The probe's findings; ``to_json`` gives ``guestmem probe --format json``.

    ``usable`` is False when ``/dev/kvm`` cannot be opened or cannot create a VM; then
    ``reason`` says why and only ``device`` and ``missing`` are filled in.
    """

    device: str
    usable: bool = True
    reason: str | None = None
    api_version: int = 0
    vcpu_mmap_size: int = 0
    capabilities: dict[str, int] = field(default_factory=dict)
    proposed_capabilities: dict[int, int] = field(default_factory=dict)
    vm_types: list[str] = field(default_factory=list)
    guest_memfd_flags: list[str] = field(default_factory=list)
    #: errno name of ``KVM_SET_MEMORY_ATTRIBUTES2`` with ``size = 0`` per fd kind, or "none".
    set_memory_attributes2: dict[str, str] = field(default_factory=dict)
    conversion_ioctl: bool = False
    guest_code: dict[str, Any] = field(default_factory=dict)
    hypercall_exit: dict[str, Any] = field(default_factory=dict)
    gup_test: str | None = None
    #: Per VM type offered (by name): :func:`_vm_type_facts`.
    vm_type_facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The series this kernel implements, from what it answers (:func:`_series`), or None.
    series: str | None = None
    #: Each absent feature (a key of :data:`FEATURES`) with the reason it is absent.
    missing: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["proposed_capabilities"] = {str(k): v for k, v in self.proposed_capabilities.items()}
        if not self.usable:
            return {key: out[key] for key in ("device", "usable", "reason", "missing")}
        del out["reason"]
        return out

    def private_memory(self, vm_type: str) -> bool:
        """Whether a VM of ``vm_type`` has private memory here: the conversion ioctl turned
        one of its pages private (a VM without private memory answers ``EINVAL``)."""
        return bool(self.vm_type_facts.get(vm_type, {}).get("private_memory"))

    @property
    def emulated(self) -> bool:
        return self.guest_code.get("mode") == "emulated"

    def lacks(self, feature: str) -> str | None:
        """Why ``feature`` (a key of :data:`FEATURES`) is absent here, or None."""
        if feature not in FEATURES:
            raise KeyError(feature)
        return self.missing.get(feature)

    def conversion_skip_reason(self) -> str | None:
        """Why conversions cannot run here, or None."""
        return self.lacks("set_memory_attributes2")


def _guest_memfd(vm: Vm) -> str | None:
    """Why this kernel has no guest_memfd (a one-page ``KVM_CREATE_GUEST_MEMFD`` with no
    flags fails), or None."""
    code = vm.try_create_guest_memfd(uapi.PAGE_SIZE)
    if not code:
        return None
    why = {
        errno.ENOTTY: "the kernel does not know the ioctl",
        errno.EINVAL: "the kernel offers no guest_memfd to a default VM",
    }.get(code, "it failed")
    return f"KVM_CREATE_GUEST_MEMFD answers {errno_name(code)}: {why}"


def _attributes2(vm: Vm, gmem_missing: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if gmem_missing is None:
        with vm.create_guest_memfd(uapi.PAGE_SIZE) as gmem:
            on_gmem = gmem.conversion_errno()
        out["guest_memfd"] = errno_name(on_gmem) if on_gmem else "none"
    on_vm = try_ioctl(vm.fd, uapi.KVM_SET_MEMORY_ATTRIBUTES2, uapi.KvmMemoryAttributes2(size=0))
    out["vm"] = errno_name(on_vm) if on_vm else "none"
    return out


def _vm_type_facts(kvm: Kvm, vm_type: int, gmem_missing: str | None) -> dict[str, Any]:
    """One VM of ``vm_type``: the series' capabilities on its fd, and whether a page of a
    fresh ``MMAP | INIT_SHARED`` guest_memfd converts to private (``errno`` otherwise)."""
    with kvm.create_vm(vm_type) as vm:
        out: dict[str, Any] = {
            "memory_attributes": vm.check_extension(uapi.KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES),
            "attributes2_flags": vm.check_extension(uapi.KVM_CAP_MEMORY_ATTRIBUTES2_FLAGS),
        }
        if gmem_missing is not None:
            out.update(private_memory=False, to_private=f"no guest_memfd ({gmem_missing})")
            return out
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


class _ProbeGuest:
    """A default VM running the tiny guest over one page at :data:`PROBE_GPA`: a shared
    guest_memfd page (``MMAP | INIT_SHARED``) where the kernel offers one, else ordinary
    anonymous memory (``memory`` says which)."""

    def __init__(self, kvm: Kvm, shared_gmem: bool, enable_hypercall: bool = False) -> None:
        self.gmem: GuestMemfd | None = None
        self.mapping: Mapping | None = None
        self.anon = 0
        self.guest: TinyGuest | None = None
        self.vm = kvm.create_vm()
        try:
            if shared_gmem:
                self.gmem = self.vm.create_guest_memfd(
                    uapi.PAGE_SIZE, uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED
                )
                self.mapping = self.gmem.mmap()
                self.vm.set_user_memory_region2(
                    1, PROBE_GPA, uapi.PAGE_SIZE, self.mapping.address, gmem=self.gmem
                )
                self.memory = "guest_memfd"
            else:
                self.anon = syscalls.anonymous(uapi.PAGE_SIZE)
                self.vm.set_user_memory_region(1, PROBE_GPA, uapi.PAGE_SIZE, self.anon)
                self.memory = "anonymous"
            if enable_hypercall:
                self.vm.enable_cap(uapi.KVM_CAP_EXIT_HYPERCALL, 1 << uapi.KVM_HC_MAP_GPA_RANGE)
            self.guest = TinyGuest(self.vm, PROBE_GPA, uapi.PAGE_SIZE)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.vm.close()
        if self.guest is not None:
            self.guest.close()
        if self.mapping is not None:
            self.mapping.close()
        if self.gmem is not None:
            self.gmem.close()
        if self.anon:
            syscalls.munmap(self.anon, uapi.PAGE_SIZE)
            self.anon = 0


def _guest_code(kvm: Kvm, shared_gmem: bool) -> dict[str, Any]:
    """Run one empty COPY command and compare ``insn_emulation`` with its instruction count."""
    probe_guest = _ProbeGuest(kvm, shared_gmem)
    try:
        assert probe_guest.guest is not None
        guest = probe_guest.guest
        guest.halt()  # first entry: lets KVM finish vCPU setup outside the measurement
        before = guest.vcpu.stats().get("insn_emulation")
        guest.copy(CODE, BOUNCE, 0)
        after = guest.vcpu.stats().get("insn_emulation")
    finally:
        probe_guest.close()
    memory = probe_guest.memory
    if before is None or after is None:
        return {
            "mode": "unknown",
            "memory": memory,
            "reason": "the vCPU stats have no insn_emulation counter",
        }
    emulated = after - before
    mode = "emulated" if emulated >= EMPTY_COPY_INSNS else "native" if emulated == 0 else "partly emulated"
    return {"mode": mode, "memory": memory, "instructions": EMPTY_COPY_INSNS, "insn_emulation": emulated}


def _hypercall_exit(kvm: Kvm, cap: int, shared_gmem: bool) -> dict[str, Any]:
    """Does a guest ``KVM_HC_MAP_GPA_RANGE`` reach userspace as ``KVM_EXIT_HYPERCALL``?"""
    if not cap & (1 << uapi.KVM_HC_MAP_GPA_RANGE):
        return {"works": False, "reason": f"KVM_CAP_EXIT_HYPERCALL = {cap:#x} lacks bit 12"}
    try:
        probe_guest = _ProbeGuest(kvm, shared_gmem, enable_hypercall=True)
    except GuestmemError as err:
        return {"works": False, "reason": f"no guest to issue it: {err}"}
    assert probe_guest.guest is not None
    guest = probe_guest.guest
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
        probe_guest.close()


def gather(kvm: Kvm, *, hypercall: bool = True) -> Facts:
    """Probe ``kvm``. ``hypercall=False`` skips the (up to 0.2 s) hypercall probe.

    Never raises for a feature the kernel lacks: it is recorded in ``Facts.missing``."""
    facts = Facts(device=kvm.path, api_version=kvm.api_version(), vcpu_mmap_size=kvm.vcpu_mmap_size())
    missing = facts.missing
    caps = facts.capabilities = {name: kvm.check_extension(getattr(uapi, name)) for name in CAPABILITIES}
    facts.proposed_capabilities = {cap: kvm.check_extension(cap) for cap in uapi.PROPOSED_CAP_RANGE}
    types = kvm.vm_types()
    facts.vm_types = bit_names(types, VM_TYPE_NAMES, index=True)
    facts.guest_memfd_flags = bit_names(caps["KVM_CAP_GUEST_MEMFD_FLAGS"], GMEM_FLAG_NAMES)
    try:
        vm = kvm.create_vm()
    except IoctlError as err:
        return unusable(kvm.path, f"{kvm.path}: KVM_CREATE_VM failed: {err}")
    with vm:
        gmem_missing = _guest_memfd(vm)
        facts.set_memory_attributes2 = _attributes2(vm, gmem_missing)
    if gmem_missing is not None:
        missing["guest_memfd"] = gmem_missing
    flags = caps["KVM_CAP_GUEST_MEMFD_FLAGS"]
    for feature, flag in (
        ("guest_memfd_mmap", uapi.GUEST_MEMFD_FLAG_MMAP),
        ("guest_memfd_init_shared", uapi.GUEST_MEMFD_FLAG_INIT_SHARED),
    ):
        if gmem_missing is not None:
            missing[feature] = f"no guest_memfd ({gmem_missing})"
        elif not flags & flag:
            missing[feature] = f"KVM_CAP_GUEST_MEMFD_FLAGS = {flags:#x} lacks {GMEM_FLAG_NAMES[flag]}"
    if gmem_missing is not None:
        missing["set_memory_attributes2"] = f"no guest_memfd to issue it on ({gmem_missing})"
    else:
        seen = facts.set_memory_attributes2["guest_memfd"]
        facts.conversion_ioctl = seen != errno_name(errno.ENOTTY)
        if not facts.conversion_ioctl:
            missing["set_memory_attributes2"] = (
                f"KVM_SET_MEMORY_ATTRIBUTES2: {seen} on the guest_memfd fd (no in-place conversion here)"
            )
    if not types & (1 << uapi.KVM_X86_SW_PROTECTED_VM):
        missing["sw_protected_vm"] = (
            f"KVM_CAP_VM_TYPES = {types:#x} lacks KVM_X86_SW_PROTECTED_VM (CONFIG_KVM_SW_PROTECTED_VM)"
        )
    facts.gup_test = pins.unavailable_reason()
    if facts.gup_test is not None:
        missing["gup_test"] = facts.gup_test
    for vm_type in range(64):
        if types & (1 << vm_type):
            name = VM_TYPE_NAMES.get(vm_type, f"type{vm_type}")
            try:
                facts.vm_type_facts[name] = _vm_type_facts(kvm, vm_type, gmem_missing)
            except IoctlError as err:
                facts.vm_type_facts[name] = {"private_memory": False, "error": str(err)}
    facts.series = _series(facts)
    shared_gmem = not ({"guest_memfd_mmap", "guest_memfd_init_shared"} & missing.keys())
    try:
        facts.guest_code = _guest_code(kvm, shared_gmem)
    except GuestmemError as err:
        facts.guest_code = {"mode": "unknown", "reason": f"the guest program cannot run: {err}"}
        missing["guest_code"] = facts.guest_code["reason"]
    if hypercall:
        facts.hypercall_exit = _hypercall_exit(kvm, caps["KVM_CAP_EXIT_HYPERCALL"], shared_gmem)
        if not facts.hypercall_exit["works"]:
            missing["hypercall_exit"] = facts.hypercall_exit["reason"]
    return facts


def unusable(device: str, reason: str) -> Facts:
    """The facts of a ``device`` that cannot run VMs: everything is missing for ``reason``."""
    return Facts(device=device, usable=False, reason=reason, missing={"kvm": reason})


def probe(device: str = DEVICE, *, hypercall: bool = True) -> Facts:
    """Open ``device`` and :func:`gather`; a device that cannot be opened or run VMs gives
    facts with ``usable = False`` and the reason, never an exception."""
    try:
        kvm = Kvm(device)
    except KvmUnavailable as err:
        return unusable(device, str(err))
    with kvm:
        return gather(kvm, hypercall=hypercall)


@functools.cache
def cached(device: str = DEVICE) -> Facts:
    """:func:`probe` once per process and device (the backend asks on every ``open``)."""
    return probe(device)
