"""Ciphertext and garbage (semantics.md §2, last paragraph): deterministic pseudo-random
bytes derived from a per-VM key, the page offset and the old contents; never the plaintext,
never all zero. SNP is the platform that shows them (platforms.md §4: the host reads
ciphertext after P→S, the guest reads garbage after S→P)."""

from __future__ import annotations

import pytest

from guestmem.model import Vm
from guestmem.spec.terms import Direction
from guestmem.uapi.kvm import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP

PAGE = 4096
NONE = 1 << 2  # seed's CONTENT_POLICY_NONE
A = b"guest secret" + bytes(PAGE - 12)
B = b"another page" + bytes(PAGE - 12)
ZERO_PAGE = bytes(PAGE)


def ciphertext(pages: list[bytes], seed: int = 0) -> list[bytes]:
    """The guest writes ``pages`` privately; P→S NONE; what the host reads per page."""
    vm = Vm("snp", key_seed=seed)
    gmem = vm.create_guest_memfd(len(pages) * PAGE, GUEST_MEMFD_FLAG_MMAP)
    vm.launch()
    gmem.guest_write(0, b"".join(pages), "private")
    gmem.convert(0, len(pages) * PAGE, Direction.TO_SHARED, NONE)
    assert {o.label for _a, _b, o in gmem.origins(0, len(pages) * PAGE)} == {"ciphertext"}
    host = gmem.mmap()
    return [host.read(i * PAGE, PAGE) for i in range(len(pages))]


def garbage(pages: list[bytes], seed: int = 0) -> list[bytes]:
    """The host writes ``pages`` while shared; S→P NONE; what the guest reads per page."""
    vm = Vm("snp", key_seed=seed)
    gmem = vm.create_guest_memfd(len(pages) * PAGE, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED)
    gmem.mmap().write(0, b"".join(pages))
    vm.launch()
    gmem.convert(0, len(pages) * PAGE, Direction.TO_PRIVATE, NONE)
    assert {o.label for _a, _b, o in gmem.origins(0, len(pages) * PAGE)} == {"garbage"}
    return [gmem.guest_read(i * PAGE, PAGE, "private") for i in range(len(pages))]


@pytest.mark.parametrize("produce", [ciphertext, garbage])
def test_never_plaintext_never_zero(produce: object) -> None:
    assert callable(produce)
    out = produce([A, B, ZERO_PAGE])
    assert out[0] != A and out[1] != B
    assert all(any(page) for page in out)  # a zero plaintext page too


@pytest.mark.parametrize("produce", [ciphertext, garbage])
def test_deterministic_per_vm_key(produce: object) -> None:
    assert callable(produce)
    assert produce([A], seed=7) == produce([A], seed=7)
    assert produce([A], seed=7) != produce([A], seed=8)


@pytest.mark.parametrize("produce", [ciphertext, garbage])
def test_depends_on_offset_and_old_contents(produce: object) -> None:
    assert callable(produce)
    same_twice = produce([A, A])
    assert same_twice[0] != same_twice[1]  # the page offset is an input
    assert produce([A])[0] != produce([B])[0]  # so are the old contents


def test_ciphertext_and_garbage_differ() -> None:
    assert ciphertext([A]) != garbage([A])
