"""Launch phases and pKVM's guest consent (semantics.md §3 *Launch*, *Guest consent on
pKVM*; §4 steps 9-10; §5 *Integrity*: pre-launch payload is measured and allowed)."""

from __future__ import annotations

import struct

import pytest

from guestmem.errors import HostFault, IoctlError
from guestmem.model import GuestMemfd, Vm
from guestmem.spec.terms import Direction
from guestmem.uapi.kvm import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP

PAGE = 4096
PRIVATE = 1 << 3
PAYLOAD = bytes(range(1, 256)) * 16 + b"\x01" * 16
SHARED_MMAP = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
ALL = ("sw_protected", "pkvm", "tdx", "snp", "cca", "default")
LAUNCHED = ("pkvm", "tdx", "snp", "cca")
ABIS = ("seed", "iteration2", "rfc-v5", "v8", "v13")
S, P = Direction.TO_SHARED, Direction.TO_PRIVATE


def labels(gmem: GuestMemfd, offset: int = 0, size: int = PAGE) -> set[str]:
    return {o.label for _a, _b, o in gmem.origins(offset, size)}


def fails(call: object, *args: object, **kwargs: object) -> IoctlError:
    assert callable(call)
    with pytest.raises(IoctlError) as err:
        call(*args, **kwargs)
    return err.value


# --- launch ---------------------------------------------------------------------------------
@pytest.mark.parametrize("abi", ABIS)
@pytest.mark.parametrize("platform", ALL)
def test_launch_once(platform: str, abi: str) -> None:
    vm = Vm(platform, abi)
    assert not vm.running
    vm.launch()
    assert vm.running
    err = fails(vm.launch)
    assert err.name == "EINVAL"
    assert vm.running


@pytest.mark.parametrize("platform", ["tdx", "snp", "cca"])
def test_guest_cannot_run_before_launch(platform: str) -> None:
    """Model assumption (Vm.run_guest): KVM_RUN before finalize is EINVAL."""
    vm = Vm(platform)
    gmem = vm.create_guest_memfd(PAGE, GUEST_MEMFD_FLAG_MMAP)
    before = gmem.digest()
    assert fails(gmem.guest_read, 0, PAGE, "private").name == "EINVAL"
    assert fails(gmem.guest_write, 0, b"x", "private").name == "EINVAL"
    assert fails(gmem.guest_request, 0, PAGE, S).name == "EINVAL"
    assert gmem.digest() == before
    vm.launch()
    gmem.guest_write(0, b"x", "private")
    assert gmem.guest_read(0, 1, "private") == b"x"


@pytest.mark.parametrize("platform", ["sw_protected"])
def test_no_launch_phase_guest_runs_any_time(platform: str) -> None:
    vm = Vm(platform)
    gmem = vm.create_guest_memfd(PAGE, GUEST_MEMFD_FLAG_MMAP)
    gmem.guest_write(0, b"x", "private")
    assert gmem.guest_read(0, 1, "private") == b"x"


@pytest.mark.parametrize(("platform", "abi", "flags"), [
    ("tdx", "seed", 2), ("snp", "seed", 2), ("cca", "seed", 2),
    ("tdx", "iteration2", 2), ("snp", "iteration2", 2), ("cca", "iteration2", 2),
    ("tdx", "rfc-v5", 2), ("snp", "rfc-v5", 2),
    ("tdx", "v8", 0), ("snp", "v8", 0),  # model assumption in spec/revisions/v8.py
])  # fmt: skip
def test_pre_launch_payload_then_guest_reads_after_launch(platform: str, abi: str, flags: int) -> None:
    """In-place initial payload (TDX INIT_MEM_REGION, SNP LAUNCH_UPDATE, CCA RMI_POPULATE):
    the host writes while shared, converts S→P with PRESERVE before launch, the guest reads
    it after launch as measured payload; the same call once running is EOPNOTSUPP (seed,
    iteration2, rfc-v5) or native (v8)."""
    vm = Vm(platform, abi)
    gmem = vm.create_guest_memfd(2 * PAGE, SHARED_MMAP)
    host = gmem.mmap()
    host.write(0, PAYLOAD * 2)
    gmem.convert(0, PAGE, P, flags)
    with pytest.raises(HostFault):  # the host lost the page (semantics.md §3 *Host access*)
        host.read(0, 1)
    vm.launch()
    assert gmem.guest_read(0, PAGE, "private") == PAYLOAD
    assert labels(gmem) == {"payload"}
    if abi == "v8":
        gmem.convert(PAGE, PAGE, P, flags)
        assert gmem.guest_read(PAGE, PAGE, "private") != PAYLOAD  # native once running
    else:
        err = fails(gmem.convert, PAGE, PAGE, P, flags)
        assert (err.name, err.error_offset) == ("EOPNOTSUPP", PAGE)
        assert not gmem.is_private(PAGE)


# --- pKVM consent ----------------------------------------------------------------------------
@pytest.fixture
def pkvm() -> tuple[Vm, GuestMemfd]:
    vm = Vm("pkvm")
    gmem = vm.create_guest_memfd(4 * PAGE, GUEST_MEMFD_FLAG_MMAP)
    vm.launch()
    gmem.guest_write(0, PAYLOAD * 4, "private")
    return vm, gmem


def test_pkvm_eperm_at_first_page_without_request(pkvm: tuple[Vm, GuestMemfd]) -> None:
    _vm, gmem = pkvm
    gmem.guest_request(0, 2 * PAGE, S)
    gmem.guest_request(3 * PAGE, PAGE, S)
    arg = bytearray(128)
    struct.pack_into("<4Q", arg, 0, 0, 4 * PAGE, 0, 2)  # P→S PRESERVE
    before = gmem.digest()
    err = fails(gmem.set_memory_attributes2, arg)
    assert (err.name, err.error_offset) == ("EPERM", 2 * PAGE)
    assert struct.unpack_from("<Q", arg, 32)[0] == 2 * PAGE
    assert gmem.digest() == before  # requests are not consumed by a failed call


def test_pkvm_request_is_consumed_by_the_conversion_that_honours_it(pkvm: tuple[Vm, GuestMemfd]) -> None:
    _vm, gmem = pkvm
    gmem.guest_request(0, 2 * PAGE, S)
    gmem.convert(0, PAGE, S, 2)
    assert gmem.mmap().read(0, PAGE) == PAYLOAD
    assert labels(gmem) == {"disclosed"}  # the guest asked: disclosure, not a leak
    # page 0's request is used up: the same conversion again needs a new one
    assert fails(gmem.convert, 0, PAGE, S, 2).name == "EPERM"
    # page 1's request was not honoured yet, so it still stands
    gmem.convert(PAGE, PAGE, S, 2)
    gmem.guest_request(0, PAGE, S)
    gmem.convert(0, PAGE, S, 2)


def test_pkvm_request_is_per_direction(pkvm: tuple[Vm, GuestMemfd]) -> None:
    _vm, gmem = pkvm
    gmem.guest_request(0, PAGE, S)
    gmem.convert(0, PAGE, S, 2)
    gmem.mmap().write(0, b"reply")
    gmem.guest_request(0, PAGE, S)  # a share request does not allow an unshare
    err = fails(gmem.convert, 0, PAGE, P, 2)
    assert (err.name, err.error_offset) == ("EPERM", 0)
    gmem.guest_request(0, PAGE, P)
    gmem.convert(0, PAGE, P, 2)
    assert gmem.guest_read(0, 5, "private") == b"reply"
    assert labels(gmem, 0, 5) == {"accepted"}


def test_pkvm_failed_policy_keeps_the_request(pkvm: tuple[Vm, GuestMemfd]) -> None:
    """Step 9 (EOPNOTSUPP) runs before step 10 and consumes nothing."""
    _vm, gmem = pkvm
    gmem.guest_request(0, PAGE, S)
    gmem.convert(0, PAGE, S, 2)
    gmem.guest_request(0, PAGE, P)
    err = fails(gmem.convert, 0, PAGE, P, 1)  # S→P ZERO: zeroed memory comes by donation
    assert (err.name, err.error_offset) == ("EOPNOTSUPP", 0)
    gmem.convert(0, PAGE, P, 2)
    assert gmem.is_private(0)


def test_pkvm_unsupported_before_consent() -> None:
    """Without any request an unsupported policy is still EOPNOTSUPP, not EPERM."""
    vm = Vm("pkvm")
    gmem = vm.create_guest_memfd(PAGE, SHARED_MMAP)
    vm.launch()
    err = fails(gmem.convert, 0, PAGE, P, 1)
    assert (err.name, err.error_offset) == ("EOPNOTSUPP", 0)
    err = fails(gmem.convert, 0, PAGE, P, 2)
    assert (err.name, err.error_offset) == ("EPERM", 0)


@pytest.mark.parametrize("platform", ["sw_protected", "tdx", "snp", "cca"])
def test_no_consent_rule_elsewhere(platform: str) -> None:
    vm = Vm(platform)
    gmem = vm.create_guest_memfd(PAGE, SHARED_MMAP)
    vm.launch()
    gmem.convert(0, PAGE, P, 0 if platform != "snp" else 4)
    assert gmem.is_private(0)


# --- populate (semantics.md §3 *Populate*) ---------------------------------------------------
#: The answer to a populate without a source where the revision needs one.
NO_SOURCE = {"tdx": "EOPNOTSUPP", "snp": "EINVAL"}
IN_PLACE = ("rfc-v5", "v8", "v13")


@pytest.mark.parametrize("abi", IN_PLACE)
@pytest.mark.parametrize("platform", ["tdx", "snp"])
def test_populate_in_place_launch_flow(platform: str, abi: str) -> None:
    """Write the payload into a shared page, convert it, populate it with no source: the
    guest reads it after launch as the measured payload."""
    vm = Vm(platform, abi)
    gmem = vm.create_guest_memfd(2 * PAGE, SHARED_MMAP)
    gmem.mmap().write(0, PAYLOAD)
    gmem.convert(0, PAGE, P, 2 if abi == "rfc-v5" else 0)  # rfc-v5 keeps bytes with PRESERVE
    gmem.populate(0, PAGE)
    vm.launch()
    assert gmem.guest_read(0, PAGE) == PAYLOAD
    assert labels(gmem) == {"payload"}


@pytest.mark.parametrize("abi", ["seed", "iteration2"])
@pytest.mark.parametrize("platform", ["tdx", "snp"])
def test_populate_needs_a_source_where_the_revision_changes_no_launch_ioctl(platform: str, abi: str) -> None:
    vm = Vm(platform, abi)
    gmem = vm.create_guest_memfd(2 * PAGE, GUEST_MEMFD_FLAG_MMAP)
    before = gmem.digest()
    assert fails(gmem.populate, 0, PAGE).name == NO_SOURCE[platform]
    assert gmem.digest() == before
    gmem.populate(0, PAGE, PAYLOAD[:100])
    vm.launch()
    assert gmem.guest_read(0, PAGE) == PAYLOAD[:100] + bytes(PAGE - 100)
    assert labels(gmem) == {"payload"}


@pytest.mark.parametrize("abi", IN_PLACE)
@pytest.mark.parametrize("platform", ["tdx", "snp"])
def test_populate_needs_a_source_without_in_place_conversion(platform: str, abi: str) -> None:
    vm = Vm(platform, abi, in_place_conversion=False)
    gmem = vm.create_guest_memfd(PAGE, GUEST_MEMFD_FLAG_MMAP)
    assert fails(gmem.populate, 0, PAGE).name == NO_SOURCE[platform]
    gmem.populate(0, PAGE, PAYLOAD)


@pytest.mark.parametrize("abi", ABIS)
def test_populate_errors_in_order_and_change_nothing(abi: str) -> None:
    """ENOTTY without the ioctl; then EINVAL once running, for a bad range, for a shared
    page; each failure leaves everything as it was (semantics.md §3 *All or nothing*)."""
    for platform in ("sw_protected", "pkvm", "cca", "default"):
        gmem = Vm(platform, abi).create_guest_memfd(PAGE, GUEST_MEMFD_FLAG_MMAP)
        assert fails(gmem.populate, 0, PAGE, PAYLOAD).name == "ENOTTY"
    vm = Vm("tdx", abi)
    gmem = vm.create_guest_memfd(4 * PAGE, SHARED_MMAP)
    gmem.mmap().write(0, PAYLOAD * 4)
    gmem.convert(0, 2 * PAGE, P, 2 if abi in ("seed", "iteration2", "rfc-v5") else 0)
    before = gmem.digest()
    for offset, size in ((0, 0), (1, PAGE), (0, PAGE + 1), (3 * PAGE, 2 * PAGE), (PAGE, 2 * PAGE)):
        assert fails(gmem.populate, offset, size, PAYLOAD).name == "EINVAL", (offset, size)
    assert gmem.digest() == before
    gmem.populate(0, 2 * PAGE, PAYLOAD)
    vm.launch()
    after = gmem.digest()
    assert fails(gmem.populate, 0, PAGE, PAYLOAD).name == "EINVAL"
    assert gmem.digest() == after
