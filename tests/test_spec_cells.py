"""Every cell of semantics.md §2 per ABI revision, measured through the model.

The expected values are typed in here from the documents (semantics.md §1-§2, uapi.md
§4/§7/§12, platforms.md §1-§5 "Policies" lines), never computed by the spec code, so a
wrong platform or revision module fails here. Each cell runs on a fresh one-page VM: the
side owning the page writes a pattern, one ``KVM_SET_MEMORY_ATTRIBUTES2`` converts it, the
other side reads (the host after P→S, the guest after S→P).
"""

from __future__ import annotations

import pytest

from guestmem.errors import IoctlError
from guestmem.model import GuestMemfd, Vm
from guestmem.spec.terms import Direction
from guestmem.uapi.kvm import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP

PAGE = 4096
PATTERN = bytes((i * 13 + 7) % 251 + 1 for i in range(PAGE))  # never 0, never 0xab
S, P = Direction.TO_SHARED, Direction.TO_PRIVATE
POLICIES = ("zero", "preserve", "none", "default")
PLATFORMS = ("sw_protected", "pkvm", "tdx", "snp", "cca", "default")
#: Platforms with a launch phase (semantics.md §3 *Launch*: sw_protected and default have none).
LAUNCHED = ("pkvm", "tdx", "snp", "cca")

#: ``flags`` a VMM passes per revision and policy (semantics.md §1; uapi.md §4). v8 has no
#: values, so a VMM written for seed passes seed's, which v8 refuses.
FLAGS: dict[str, dict[str, int]] = {
    "seed": {"zero": 1, "preserve": 2, "none": 4, "default": 0},
    "iteration2": {"zero": 1, "preserve": 2, "none": 4, "default": 0},
    "rfc-v5": {"zero": 1, "preserve": 2, "none": 0, "default": 0},  # MODE_UNSPECIFIED = 0
    "v8": {"zero": 1, "preserve": 2, "none": 4, "default": 0},
    "v13": {"zero": 1, "preserve": 2, "none": 4, "default": 0},
}

Z, PR, AB, CT, GB, RND = "zeros", "preserved", "fill:ab", "ciphertext", "garbage", "random"
XX, INV = "EOPNOTSUPP", "EINVAL"
Row = tuple[str, str, str, str, str, str, str, str]


def _table(rows: dict[str, Row]) -> dict[tuple[str, Direction, str], str]:
    """``platform: (P→S zero, preserve, none, default, S→P zero, preserve, none, default)``."""
    out: dict[tuple[str, Direction, str], str] = {}
    for platform, cells in rows.items():
        for i, result in enumerate(cells):
            out[(platform, S if i < 4 else P, POLICIES[i % 4])] = result
    return out


#: Running phase (for pkvm: after the guest's request, semantics.md §3 consent).
RUNNING: dict[str, dict[tuple[str, Direction, str], str]] = {
    # semantics.md §2, row by row; default (flags 0) means ZERO under seed (§1).
    "seed": _table(
        {
            "sw_protected": (Z, PR, AB, Z, Z, PR, AB, Z),
            "pkvm": (Z, PR, PR, Z, XX, PR, PR, XX),
            "tdx": (Z, XX, Z, Z, Z, XX, Z, Z),
            "snp": (Z, XX, CT, Z, XX, XX, GB, XX),
            "cca": (Z, XX, Z, Z, Z, XX, Z, Z),
            "default": (INV,) * 8,
        }
    ),
    # semantics.md §1: S→P ZERO (and so flags 0) is EOPNOTSUPP except on sw_protected.
    "iteration2": _table(
        {
            "sw_protected": (Z, PR, AB, Z, Z, PR, AB, Z),
            "pkvm": (Z, PR, PR, Z, XX, PR, PR, XX),
            "tdx": (Z, XX, Z, Z, XX, XX, Z, XX),
            "snp": (Z, XX, CT, Z, XX, XX, GB, XX),
            "cca": (Z, XX, Z, Z, XX, XX, Z, XX),
            "default": (INV,) * 8,
        }
    ),
    # uapi.md §7/§12, platforms.md §0-§5: to-private ZERO is EOPNOTSUPP for all; sw_protected
    # scrambles unspecified conversions; TDX/SNP PRESERVE only to-private before launch;
    # arm64 supports no mode and has no PRIVATE attribute (kvm_arch_has_private_mem is
    # x86-only, semantics.md §1), so its S→P is EINVAL; attributes = 0 passes on a VM
    # without private memory, where KVM leaves contents alone and the default VM type
    # supports no mode.
    "rfc-v5": _table(
        {
            "sw_protected": (Z, PR, RND, RND, XX, PR, RND, RND),
            "pkvm": (XX, XX, PR, PR, INV, INV, INV, INV),
            "tdx": (Z, XX, Z, Z, XX, XX, Z, Z),
            "snp": (Z, XX, CT, CT, XX, XX, GB, GB),
            "cca": (XX, XX, Z, Z, INV, INV, INV, INV),
            "default": (XX, XX, PR, PR, INV, INV, INV, INV),
        }
    ),
    # semantics.md §1 / uapi.md §4, §11: any non-zero flag is EINVAL; only sw_protected,
    # tdx and snp have private memory; contents follow the native effect.
    "v8": _table(
        {
            "sw_protected": (INV, INV, INV, PR, INV, INV, INV, PR),
            "pkvm": (INV,) * 8,
            "tdx": (INV, INV, INV, Z, INV, INV, INV, Z),
            "snp": (INV, INV, INV, CT, INV, INV, INV, GB),
            "cca": (INV,) * 8,
            "default": (INV,) * 8,
        }
    ),
}

#: Pre-launch cells that differ from running (semantics.md §2 "pre-launch: preserved").
PRE_LAUNCH_CHANGES: dict[str, dict[tuple[str, Direction, str], str]] = {
    "seed": {("tdx", P, "preserve"): PR, ("snp", P, "preserve"): PR, ("cca", P, "preserve"): PR},
    "iteration2": {("tdx", P, "preserve"): PR, ("snp", P, "preserve"): PR, ("cca", P, "preserve"): PR},
    # RFC v5: SNP/TDX PRESERVE "when to_private && !pre_fault_allowed"; arm64 has no mode.
    # On pkvm nothing puts the pattern into private memory before launch (no S→P, and a
    # guest write launches the VM), so the page is private from creation and unallocated:
    # its native P→S shows zeros.
    "rfc-v5": {
        ("tdx", P, "preserve"): PR,
        ("snp", P, "preserve"): PR,
        ("pkvm", S, "none"): Z,
        ("pkvm", S, "default"): Z,
    },
    # Model assumption (spec/revisions/v8.py): the in-place populate of v8 22/46, 23/46
    # reads the page a pre-launch to-private conversion left.
    "v8": {("tdx", P, "default"): PR, ("snp", P, "default"): PR},
}
# semantics.md §1a: v13 changes only what happens to pages a conversion leaves in their
# state, which no one-page cell has, so every cell is v8's.
RUNNING["v13"] = RUNNING["v8"]
PRE_LAUNCH_CHANGES["v13"] = PRE_LAUNCH_CHANGES["v8"]


def expected(abi: str, platform: str, direction: Direction, policy: str, phase: str) -> str:
    key = (platform, direction, policy)
    if phase == "pre_launch" and key in PRE_LAUNCH_CHANGES[abi]:
        return PRE_LAUNCH_CHANGES[abi][key]
    return RUNNING[abi][key]


def classify(data: bytes, origins: set[str]) -> str:
    """What a reader got, named as semantics.md §2 does; keyed bytes by their provenance."""
    if data == bytes(len(data)):
        return Z
    if data == b"\xab" * len(data):
        return AB
    if data == PATTERN:
        return PR
    assert len(origins) == 1, origins
    (origin,) = origins
    assert origin in (CT, GB, RND), origin
    return origin


def _place_payload(vm: Vm, abi: str) -> tuple[GuestMemfd, bool]:
    """A pre-launch private page holding PATTERN if any pre-launch S→P carries it."""
    for flags in (FLAGS[abi]["preserve"], 0):
        gmem = vm.create_guest_memfd(PAGE, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED)
        gmem.mmap().write(0, PATTERN)
        try:
            gmem.convert(0, PAGE, P, flags)
        except IoctlError:
            continue
        if gmem.peek(0, PAGE) == PATTERN:
            return gmem, True
    # no pre-launch S→P carries it (or none converts at all): private from creation
    if not gmem.is_private(0):
        gmem = vm.create_guest_memfd(PAGE, GUEST_MEMFD_FLAG_MMAP)
    return gmem, False


def measure(abi: str, platform: str, direction: Direction, policy: str, phase: str, request: bool) -> str:
    """Run one cell; the result name, or the errno name of the conversion."""
    vm = Vm(platform, abi)
    flags = FLAGS[abi][policy]
    if direction is P:
        gmem = vm.create_guest_memfd(PAGE, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED)
        gmem.mmap().write(0, PATTERN)
    elif phase == "running" or platform not in LAUNCHED:
        gmem = vm.create_guest_memfd(PAGE, GUEST_MEMFD_FLAG_MMAP)  # private from creation
        if phase == "running":
            vm.launch()
        gmem.guest_write(0, PATTERN, "private")
    else:
        gmem, _placed = _place_payload(vm, abi)
    if phase == "running" and not vm.running:
        vm.launch()
    if request:
        gmem.guest_request(0, PAGE, direction)
    try:
        gmem.convert(0, PAGE, direction, flags)
    except IoctlError as err:
        if err.name == XX:
            assert err.error_offset == 0  # semantics.md §4 step 9: error_offset = offset
        return err.name
    if direction is S:
        data = gmem.mmap().read(0, PAGE)
    else:
        if not vm.running and platform in LAUNCHED:
            vm.launch()
        data = gmem.guest_read(0, PAGE, "private")
    return classify(data, {o.label for _a, _b, o in gmem.origins(0, PAGE)})


CELLS = [
    (abi, platform, direction, policy, phase)
    for abi in RUNNING
    for platform in PLATFORMS
    for direction in (S, P)
    for policy in POLICIES
    for phase in ("pre_launch", "running")
]


@pytest.mark.parametrize(("abi", "platform", "direction", "policy", "phase"), CELLS)
def test_cell(abi: str, platform: str, direction: Direction, policy: str, phase: str) -> None:
    request = platform == "pkvm" and phase == "running"
    got = measure(abi, platform, direction, policy, phase, request)
    assert got == expected(abi, platform, direction, policy, phase)


@pytest.mark.parametrize("abi", ["seed", "iteration2", "rfc-v5"])
@pytest.mark.parametrize("direction", [S, P])
@pytest.mark.parametrize("policy", POLICIES)
def test_pkvm_running_without_request(abi: str, direction: Direction, policy: str) -> None:
    """semantics.md §3 consent, §4 steps 5, 9-10: EINVAL and EOPNOTSUPP come first, else EPERM."""
    want = expected(abi, "pkvm", direction, policy, "running")
    got = measure(abi, "pkvm", direction, policy, "running", request=False)
    assert got == (want if want in (XX, INV) else "EPERM")


@pytest.mark.parametrize("abi", ["seed", "iteration2", "rfc-v5"])
@pytest.mark.parametrize("direction", [S, P])
@pytest.mark.parametrize("policy", POLICIES)
def test_pkvm_pre_launch_needs_no_request(abi: str, direction: Direction, policy: str) -> None:
    """Consent binds only once running (semantics.md §3)."""
    got = measure(abi, "pkvm", direction, policy, "pre_launch", request=False)
    assert got == expected(abi, "pkvm", direction, policy, "pre_launch")
