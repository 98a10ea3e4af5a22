"""The VMM's conversion handler on guest-initiated flows (uapi.md §13), per platform.

Expected contents per platform come from semantics.md §2 and the default VMM policy's
reasoning (guestmem.vmm.handler): a shared bounce buffer keeps the guest's bytes where the
platform can preserve (sw_protected, pkvm) and reads zeros elsewhere; a page taken back
private reads zeros where a trusted party zeroes (sw_protected, tdx, cca), the host's
reply on pkvm (Stage-2 transfer), garbage on snp.
"""

from __future__ import annotations

from typing import Any

import pytest

from guestmem.backend.base import Machine, Outcome
from guestmem.backend.model import ModelMachine
from guestmem.spec.terms import Direction, Policy
from guestmem.uapi.kvm import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP
from guestmem.vmm import ConversionHandler, VmmPolicy, default_policy

PAGE = 4096
GPA = 1 << 32
DATA = b"bounce buffer: guest data" + bytes(PAGE - 25)
REPLY = b"host reply" + bytes(PAGE - 10)
S, P = Direction.TO_SHARED, Direction.TO_PRIVATE
ZERO, PRESERVE, NONE, DEFAULT = Policy.ZERO, Policy.PRESERVE, Policy.NONE, Policy.DEFAULT


def machine(platform: str, abi: str = "seed", pages: int = 4, shared: bool = False) -> ModelMachine:
    flags = GUEST_MEMFD_FLAG_MMAP | (GUEST_MEMFD_FLAG_INIT_SHARED if shared else 0)
    m = ModelMachine(platform, abi, pages * PAGE, flags)
    assert m.launch().ok
    return m


class OnlyMachine:
    """A backend that offers exactly the Machine protocol and nothing else."""

    _OPS = frozenset(
        {"host_write", "host_read", "guest_write", "guest_read", "convert", "punch_hole"}
        | {"pin", "unpin", "launch", "guest_request", "check_extension", "close"}
    )

    def __init__(self, inner: ModelMachine) -> None:
        self._inner = inner
        self.backend, self.platform, self.abi = "proxy", inner.platform, inner.abi
        self.size, self.gpa_base = inner.size, inner.gpa_base
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name not in self._OPS:
            raise AttributeError(f"{name} is not part of the Machine protocol")
        self.calls.append(name)
        return getattr(self._inner, name)


# --- default policies --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("platform", "abi", "want"),
    [
        ("sw_protected", "seed", (PRESERVE, ZERO, ZERO, PRESERVE)),
        ("pkvm", "seed", (PRESERVE, PRESERVE, ZERO, NONE)),
        ("tdx", "seed", (ZERO, ZERO, NONE, NONE)),
        ("snp", "seed", (ZERO, NONE, NONE, None)),
        ("cca", "seed", (ZERO, ZERO, NONE, NONE)),
        ("default", "seed", (DEFAULT, DEFAULT, None, None)),
        # iteration2: no S→P ZERO on hardware platforms
        ("tdx", "iteration2", (ZERO, NONE, NONE, None)),
        ("cca", "iteration2", (ZERO, NONE, NONE, None)),
        # rfc-v5: arm64 has no mode and no PRIVATE attribute (S→P is EINVAL: flags 0
        # reports it); to-private ZERO refused for all; NONE means flags 0
        ("pkvm", "rfc-v5", (NONE, DEFAULT, None, None)),
        ("sw_protected", "rfc-v5", (PRESERVE, PRESERVE, ZERO, NONE)),
        ("tdx", "rfc-v5", (ZERO, NONE, NONE, None)),
        # v8: flags must be 0
        ("sw_protected", "v8", (DEFAULT, DEFAULT, None, None)),
        ("snp", "v8", (DEFAULT, DEFAULT, None, None)),
    ],
)
def test_default_policy(platform: str, abi: str, want: tuple[Policy | None, ...]) -> None:
    """(to_shared, to_private, shared_fallback, private_fallback)."""
    p = default_policy(platform, abi)
    assert (p.to_shared, p.to_private, p.shared_fallback, p.private_fallback) == want


# --- explicit flow: KVM_HC_MAP_GPA_RANGE -------------------------------------------------------
SHARED_VIEW = {"sw_protected": DATA, "pkvm": DATA, "tdx": bytes(PAGE), "snp": bytes(PAGE), "cca": bytes(PAGE)}
PRIVATE_VIEW = {"sw_protected": bytes(PAGE), "pkvm": REPLY, "tdx": bytes(PAGE), "cca": bytes(PAGE)}


@pytest.mark.parametrize("platform", ["sw_protected", "pkvm", "tdx", "snp", "cca"])
def test_hypercall_bounce_buffer_round_trip(platform: str) -> None:
    m = machine(platform)
    vmm = ConversionHandler(m)
    assert m.guest_write(PAGE, DATA, "private").ok
    # the guest shares page 1: MAP_GPA_RANGE(gpa, 1 page, DECRYPTED)
    assert vmm.run(lambda: m.guest_request(PAGE, PAGE, S)) == Outcome()
    assert vmm.log[-1].exit == {
        "reason": "HYPERCALL",
        "nr": 12,
        "gpa": GPA + PAGE,
        "npages": 1,
        "attributes": 0,
    }
    assert (vmm.log[-1].offset, vmm.log[-1].size, vmm.log[-1].direction) == (PAGE, PAGE, S)
    assert m.host_read(PAGE, PAGE).data == SHARED_VIEW[platform]
    assert m.host_write(PAGE, REPLY).ok
    assert m.guest_read(PAGE, PAGE, "shared").data == REPLY
    # and takes it back: MAP_GPA_RANGE(gpa, 1 page, ENCRYPTED)
    assert vmm.run(lambda: m.guest_request(PAGE, PAGE, P)) == Outcome()
    assert m.host_read(PAGE, PAGE).signal == "SIGBUS"
    got = m.guest_read(PAGE, PAGE, "private")
    if platform == "snp":
        assert got.data not in (REPLY, bytes(PAGE))
        assert {o for _a, _b, o in got.origins or []} == {"garbage"}
    else:
        assert got.data == PRIVATE_VIEW[platform]
    assert [r.policy for r in vmm.log] == [
        default_policy(platform).to_shared,
        default_policy(platform).to_private,
    ]


def test_hypercall_on_vm_without_private_memory() -> None:
    m = machine("default", shared=True)
    vmm = ConversionHandler(m)
    assert vmm.run(lambda: m.guest_request(0, PAGE, P)) == Outcome(errno="EINVAL")


@pytest.mark.parametrize("abi", ["iteration2", "rfc-v5", "v8"])
@pytest.mark.parametrize("platform", ["sw_protected", "tdx", "snp"])
def test_hypercall_flow_under_other_revisions(platform: str, abi: str) -> None:
    """The default policy always converts a running guest's request (flags per revision)."""
    m = machine(platform, abi)
    vmm = ConversionHandler(m)
    assert vmm.run(lambda: m.guest_request(0, 2 * PAGE, S)) == Outcome()
    assert vmm.run(lambda: m.guest_request(0, PAGE, P)) == Outcome()
    assert all(len(r.attempts) == 1 for r in vmm.log)
    if abi == "v8":
        assert [a.flags for r in vmm.log for a in r.attempts] == [0, 0]


# --- implicit flow: KVM_EXIT_MEMORY_FAULT ------------------------------------------------------
@pytest.mark.parametrize("platform", ["sw_protected", "tdx", "snp", "cca"])
def test_memory_fault_converts_and_reruns(platform: str) -> None:
    m = machine(platform)
    vmm = ConversionHandler(m)
    assert m.guest_write(0, DATA, "private").ok
    # a shared access to two private pages: one fault per page, each converted, then done
    out = vmm.run(lambda: m.guest_read(0, 2 * PAGE, "shared"))
    assert out.ok
    assert out.data == SHARED_VIEW[platform] + bytes(PAGE)
    assert [(r.exit["gpa"], r.exit["flags"], r.direction) for r in vmm.log] == [
        (GPA, 0, S),
        (GPA + PAGE, 0, S),
    ]
    # a private write to a shared page faults the other way
    out = vmm.run(lambda: m.guest_write(PAGE, REPLY, "private"))
    assert out.ok
    assert vmm.log[-1].exit["flags"] == 1 << 3 and vmm.log[-1].direction is P
    assert m.guest_read(PAGE, PAGE, "private").data == REPLY


def test_memory_fault_on_pkvm_needs_consent() -> None:
    """pKVM converts only what the guest asked for: an implicit fault is EPERM, and the
    guest stays at the faulting access."""
    m = machine("pkvm")
    vmm = ConversionHandler(m)
    out = vmm.run(lambda: m.guest_read(0, PAGE, "shared"))
    assert (out.errno, out.error_offset) == ("EPERM", 0)
    assert out.exit is not None and out.exit["reason"] == "MEMORY_FAULT"
    # once the guest asks, the same access goes through
    assert vmm.run(lambda: m.guest_request(0, PAGE, S)) == Outcome()
    assert vmm.run(lambda: m.guest_read(0, PAGE, "shared")).ok


def test_access_without_exit_passes_through() -> None:
    m = machine("tdx")
    vmm = ConversionHandler(m)
    assert vmm.run(lambda: m.guest_write(0, DATA, "private")).ok
    assert vmm.log == []


# --- EAGAIN: the VMM's pins ----------------------------------------------------------------------
@pytest.mark.parametrize("platform", ["sw_protected", "pkvm", "tdx", "snp", "cca"])
def test_pinned_page_is_unpinned_and_retried(platform: str) -> None:
    m = machine(platform, shared=True)
    vmm = ConversionHandler(m)
    assert vmm.pin(PAGE, PAGE).ok and vmm.pin(3 * PAGE, PAGE).ok  # e.g. DMA-mapped shared pages
    assert vmm.run(lambda: m.guest_request(0, 4 * PAGE, P)) == Outcome()
    res = vmm.log[-1]
    assert [a.outcome.errno for a in res.attempts] == ["EAGAIN", None]
    assert res.attempts[0].outcome.error_offset == PAGE  # first pinned page
    assert res.unpinned == [(PAGE, PAGE), (3 * PAGE, PAGE)]
    assert vmm.pins == []
    assert m.host_read(PAGE, 1).signal == "SIGBUS"


def test_pins_given_at_construction_and_counted() -> None:
    m = machine("tdx", shared=True)
    for _ in range(2):
        assert m.pin(0, PAGE).ok
    vmm = ConversionHandler(m, pins=[(0, PAGE), (0, PAGE)])
    out = vmm.run(lambda: m.guest_read(0, PAGE, "private"))
    assert out.ok and out.data == bytes(PAGE)
    assert vmm.log[-1].unpinned == [(0, PAGE), (0, PAGE)]
    assert vmm.pins == []


def test_someone_elses_pin_is_not_dropped() -> None:
    m = machine("sw_protected", shared=True)
    assert m.pin(2 * PAGE, PAGE).ok  # not the VMM's
    vmm = ConversionHandler(m)
    out = vmm.run(lambda: m.guest_request(0, 4 * PAGE, P))
    assert (out.errno, out.error_offset) == ("EAGAIN", 2 * PAGE)
    assert len(vmm.log[-1].attempts) == 1
    assert m.host_read(0, 1).ok  # still shared: all or nothing


def test_pins_outside_the_range_stay() -> None:
    """A pin is released as the range it was taken with; the part outside the conversion
    is pinned again."""
    m = machine("sw_protected", shared=True)
    vmm = ConversionHandler(m)
    assert vmm.pin(0, 3 * PAGE).ok and vmm.pin(3 * PAGE, PAGE).ok
    assert vmm.run(lambda: m.guest_request(PAGE, PAGE, P)) == Outcome()
    assert vmm.log[-1].unpinned == [(0, 3 * PAGE)]
    assert sorted(vmm.pins) == [(0, PAGE), (2 * PAGE, PAGE), (3 * PAGE, PAGE)]
    blocked = m.convert(0, PAGE, 1 << 3, 2)  # the backend holds page 0's new pin
    assert (blocked.errno, blocked.error_offset) == ("EAGAIN", 0)


# --- EOPNOTSUPP: fallback ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("platform", "policy", "result"),
    [
        ("snp", VmmPolicy(to_shared=ZERO, to_private=ZERO, private_fallback=NONE), "garbage"),
        ("pkvm", VmmPolicy(to_shared=ZERO, to_private=ZERO, private_fallback=PRESERVE), "accepted"),
        ("tdx", VmmPolicy(to_shared=PRESERVE, to_private=ZERO, shared_fallback=NONE), "zeroed"),
    ],
)
def test_eopnotsupp_falls_back(platform: str, policy: VmmPolicy, result: str) -> None:
    m = machine(platform, shared=platform != "tdx")
    vmm = ConversionHandler(m, policy)
    if platform == "tdx":
        assert m.guest_write(0, DATA, "private").ok
    else:
        assert m.host_write(0, REPLY).ok
    direction = S if platform == "tdx" else P
    assert vmm.run(lambda: m.guest_request(0, PAGE, direction)) == Outcome()
    res = vmm.log[-1]
    assert [(a.policy, a.outcome.errno) for a in res.attempts] == [
        (policy.attempts(direction)[0], "EOPNOTSUPP"),
        (policy.attempts(direction)[1], None),
    ]
    assert res.policy is policy.attempts(direction)[1]
    read = m.host_read(0, PAGE) if direction is S else m.guest_read(0, PAGE, "private")
    assert {o for _a, _b, o in read.origins or []} == {result}


def test_eopnotsupp_without_fallback_is_reported() -> None:
    m = machine("snp", shared=True)
    vmm = ConversionHandler(m, VmmPolicy(to_shared=ZERO, to_private=ZERO))
    out = vmm.run(lambda: m.guest_request(PAGE, PAGE, P))
    assert (out.errno, out.error_offset) == ("EOPNOTSUPP", PAGE)


def test_fallback_after_dropping_pins() -> None:
    """EAGAIN comes after the policy check (step 11 after 9), so the fallback policy is the
    one that meets the pin, and the retry keeps it."""
    m = machine("snp", shared=True)
    vmm = ConversionHandler(m, VmmPolicy(to_shared=ZERO, to_private=ZERO, private_fallback=NONE))
    assert vmm.pin(0, PAGE).ok
    assert vmm.run(lambda: m.guest_request(0, PAGE, P)) == Outcome()
    assert [(a.policy, a.outcome.errno) for a in vmm.log[-1].attempts] == [
        (ZERO, "EOPNOTSUPP"),
        (NONE, "EAGAIN"),
        (NONE, None),
    ]


# --- bad exits, protocol ------------------------------------------------------------------------
def test_exit_outside_guest_memfd_is_refused() -> None:
    m = machine("tdx")
    vmm = ConversionHandler(m)
    res = vmm.handle({"reason": "HYPERCALL", "nr": 12, "gpa": GPA + 8 * PAGE, "npages": 1, "attributes": 0})
    assert res.refused and res.attempts == [] and res.outcome.errno == "EINVAL"
    res = vmm.handle({"reason": "MEMORY_FAULT", "gpa": 0, "size": PAGE, "flags": 0})
    assert res.refused and res.attempts == []


def test_not_a_conversion_exit() -> None:
    vmm = ConversionHandler(machine("tdx"))
    with pytest.raises(ValueError, match="not a conversion exit"):
        vmm.handle({"reason": "HYPERCALL", "nr": 5, "gpa": GPA, "npages": 1, "attributes": 0})
    with pytest.raises(ValueError, match="not a conversion exit"):
        vmm.handle({"reason": "MMIO"})


def test_uses_only_the_machine_protocol() -> None:
    proxy = OnlyMachine(machine("sw_protected"))
    m: Machine = proxy
    vmm = ConversionHandler(m)
    assert vmm.pin is not None
    assert vmm.run(lambda: m.guest_read(0, PAGE, "shared")).ok
    assert vmm.run(lambda: m.guest_request(0, PAGE, P)) == Outcome()
    assert set(proxy.calls) == {"guest_read", "convert", "guest_request"}


def test_skipped_conversion_is_not_a_success() -> None:
    """A backend that cannot convert reports ``skipped``; the guest operation is not resumed
    as if it had worked."""

    class NoConversion(OnlyMachine):
        def convert(self, *args: Any, **kwargs: Any) -> Outcome:
            return Outcome(skipped="no conversion ioctl here")

    m = NoConversion(machine("sw_protected"))
    vmm = ConversionHandler(m)
    out = vmm.run(lambda: m.guest_request(0, PAGE, S))
    assert out.skipped == "no conversion ioctl here" and not out.ok
    out = vmm.run(lambda: m.guest_read(0, PAGE, "shared"))
    assert out.skipped == "no conversion ioctl here" and out.exit is not None
