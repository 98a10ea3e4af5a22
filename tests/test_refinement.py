"""Refinement: the model against a deliberately simple per-page reference.

The reference below is written from docs/semantics.md (the tables of §1-§4), page by
page, without looking at how the model stores anything: a page is private or shared,
holds bytes or is unallocated, has pins and a pending guest request. A hypothesis state
machine drives both with the same random operations and compares every outcome and,
after every step, every page's attribute and contents.

What the reference takes from docs/semantics.md beyond the §2 table:
- a guest cannot run (access memory or issue requests) before launch on ``tdx``, ``snp``
  and ``cca`` (``EINVAL``); on ``pkvm`` the first run launches the VM (§3 *Launch*);
- under ``v8`` (and ``v13``), a pre-launch to-private conversion on TDX and SNP keeps its
  contents (the in-place populate reads the guest_memfd page; §8);
- under ``rfc-v5`` and ``v8``, a running to-private conversion of a range that changes
  state leaves the already-private pages of the range zeroed on TDX (§3 *Mixed ranges*);
- a native effect (NONE except ``sw_protected``'s fill, ``rfc-v5``'s flags = 0 except
  ``sw_protected``'s scramble, everything under ``v8``) reaches only pages that change
  state; a policy KVM applies reaches every allocated page of the range (§3 *Whole range*);
- ``fallocate`` without ``PUNCH_HOLE`` allocates nothing a reader or a policy sees (§3
  *Allocated*);
- under ``rfc-v5`` only x86 VM types with private memory accept PRIVATE (§1);
- an injected allocation failure gives ``ENOMEM`` at ``offset`` before the unmap, and only
  a range that changes state allocates (§4 step 10a).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from guestmem.backend.base import Outcome
from guestmem.backend.model import ModelMachine
from guestmem.spec.terms import Direction
from guestmem.uapi.kvm import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP

PAGE = 4096
NPAGES = 3
GPA_BASE = 1 << 32
PRIVATE_ATTR = 8
FAULT_PRIVATE = 1 << 3
LAUNCHED_PLATFORMS = {"pkvm", "tdx", "snp", "cca"}
FIRST_RUN_LAUNCHES = {"pkvm"}
X86_PRIVATE = {"sw_protected", "tdx", "snp"}
#: ``v13`` answers every call as ``v8`` does, except in mixed ranges (semantics.md §1a).
V8_LIKE = ("v8", "v13")
#: Revisions that unmap the guest's private pages in a mixed to-private range, and the
#: platforms where that unmap loses them (semantics.md §3 *Mixed ranges*).
UNMAP_PRIVATE_TOO = ("rfc-v5", "v8")
UNMAP_LOSES = {"tdx", "cca"}

# semantics.md §1: flags per revision (seed and iteration2 share the encoding).
SEED_FLAGS = {"default": 0, "zero": 1, "preserve": 2, "none": 4}
SEED_DECODE = {0: "zero", 1: "zero", 2: "preserve", 4: "none"}
# rfc-v5: MODE_UNSPECIFIED 0, ZERO 1<<0, PRESERVE 1<<1.
RFC_DECODE = {0: "unspecified", 1: "zero", 2: "preserve"}

# semantics.md §2 under seed: (to, policy) -> result; "pre:" = only before launch; "X" = EOPNOTSUPP.
SEED_TABLE: dict[str, dict[tuple[str, str], str]] = {
    "sw_protected": {
        ("shared", "zero"): "zeros",
        ("shared", "preserve"): "preserved",
        ("shared", "none"): "fill",
        ("private", "zero"): "zeros",
        ("private", "preserve"): "preserved",
        ("private", "none"): "fill",
    },
    "pkvm": {
        ("shared", "zero"): "zeros",
        ("shared", "preserve"): "preserved",
        ("shared", "none"): "preserved",
        ("private", "zero"): "X",
        ("private", "preserve"): "preserved",
        ("private", "none"): "preserved",
    },
    "tdx": {
        ("shared", "zero"): "zeros",
        ("shared", "preserve"): "X",
        ("shared", "none"): "zeros",
        ("private", "zero"): "zeros",
        ("private", "preserve"): "pre:preserved",
        ("private", "none"): "zeros",
    },
    "snp": {
        ("shared", "zero"): "zeros",
        ("shared", "preserve"): "X",
        ("shared", "none"): "opaque",
        ("private", "zero"): "X",
        ("private", "preserve"): "pre:preserved",
        ("private", "none"): "opaque",
    },
    "cca": {
        ("shared", "zero"): "zeros",
        ("shared", "preserve"): "X",
        ("shared", "none"): "zeros",
        ("private", "zero"): "zeros",
        ("private", "preserve"): "pre:preserved",
        ("private", "none"): "zeros",
    },
}
# docs/semantics.md §2 "native: X" and §1 v8: the native effect, per direction.
NATIVE = {
    "sw_protected": {"shared": "preserved", "private": "preserved"},
    "pkvm": {"shared": "preserved", "private": "preserved"},
    "tdx": {"shared": "zeros", "private": "zeros"},
    "snp": {"shared": "opaque", "private": "opaque"},
    "cca": {"shared": "zeros", "private": "zeros"},
    "default": {"shared": "preserved", "private": "preserved"},
}


@dataclass
class RefPage:
    private: bool
    data: bytes | None = None  # None: unallocated (reads zeros at first use)
    pins: int = 0
    stale_pins: int = 0  # pins on a folio punched out of the file
    request: str | None = None  # "shared" / "private": what the guest asked for


@dataclass
class Reference:
    platform: str
    abi: str
    pages: list[RefPage]
    running: bool = False
    #: filled in by the caller after an opaque conversion (ciphertext / garbage)
    opaque: list[int] = field(default_factory=list)
    #: allocations that fail next (fault injection)
    failslab: int = 0

    @property
    def has_private(self) -> bool:
        return self.platform != "default"

    # --- host (§3 Host access) --------------------------------------------------------------
    def host_access(self, offset: int, data: bytes | None, size: int) -> Outcome:
        out = bytearray()
        end = offset + (len(data) if data is not None else size)
        pos = offset
        while pos < end:
            index, start = divmod(pos, PAGE)
            stop = min(PAGE, start + end - pos)
            page = self.pages[index]
            if page.private:
                return Outcome(signal="SIGBUS")
            current = page.data if page.data is not None else bytes(PAGE)
            if data is not None:
                chunk = data[pos - offset : pos - offset + stop - start]
                page.data = current[:start] + chunk + current[stop:]
            else:
                page.data = current
                out += current[start:stop]
            pos += stop - start
        return Outcome(data=None if data is not None else bytes(out))

    # --- guest (§3 Guest access mismatch) ------------------------------------------------------
    def run(self) -> bool:
        """The vCPU runs: False when it may not yet (``EINVAL``)."""
        if self.platform in LAUNCHED_PLATFORMS and not self.running:
            if self.platform not in FIRST_RUN_LAUNCHES:
                return False
            self.running = True
        return True

    def guest_access(self, offset: int, data: bytes | None, size: int, access: str | None) -> Outcome:
        if not self.run():
            return Outcome(errno="EINVAL")
        out = bytearray()
        end = offset + (len(data) if data is not None else size)
        pos = offset
        while pos < end:
            index, start = divmod(pos, PAGE)
            stop = min(PAGE, start + end - pos)
            page = self.pages[index]
            want = page.private if access is None and self.has_private else access == "private"
            if want != page.private:
                exit_ = {
                    "reason": "MEMORY_FAULT",
                    "gpa": GPA_BASE + index * PAGE,
                    "size": PAGE,
                    "flags": FAULT_PRIVATE if want else 0,
                }
                return Outcome(exit=exit_)
            current = page.data if page.data is not None else bytes(PAGE)
            if data is not None:
                chunk = data[pos - offset : pos - offset + stop - start]
                page.data = current[:start] + chunk + current[stop:]
            else:
                page.data = current
                out += current[start:stop]
            pos += stop - start
        return Outcome(data=None if data is not None else bytes(out))

    def guest_request(self, first: int, count: int, to: str) -> Outcome:
        if not self.run():
            return Outcome(errno="EINVAL")
        if count == 0 or first + count > NPAGES:
            return Outcome(errno="EINVAL")
        for index in range(first, first + count):
            self.pages[index].request = to
        return Outcome(
            exit={
                "reason": "HYPERCALL",
                "nr": 12,
                "gpa": GPA_BASE + first * PAGE,
                "npages": count,
                "attributes": 1 << 4 if to == "private" else 0,
            }
        )

    # --- the conversion (§4 in order) ----------------------------------------------------------
    def result(self, to: str, policy: str) -> str:
        if self.abi == "rfc-v5":
            if policy == "unspecified":
                return "opaque" if self.platform == "sw_protected" else NATIVE[self.platform][to]
            if self.platform not in X86_PRIVATE:
                return "X"  # no content mode on arm64 or the default VM
            if policy == "zero":
                return "zeros" if to == "shared" else "X"
            if self.platform == "sw_protected":
                return "preserved"
            return "preserved" if to == "private" and not self.running else "X"
        if self.abi in V8_LIKE:
            if to == "private" and not self.running and self.platform in ("tdx", "snp"):
                return "preserved"  # in-place populate (module docstring)
            return NATIVE[self.platform][to]
        if (
            self.abi == "iteration2"
            and to == "private"
            and policy == "zero"
            and self.platform != "sw_protected"
        ):
            return "X"
        cell = SEED_TABLE[self.platform][to, policy]
        if cell.startswith("pre:"):
            return "X" if self.running else cell[4:]
        return cell

    def applied_by_kvm(self, policy: str) -> bool:
        """§3 *Whole range*: KVM's own policies reach pages already in the target state."""
        if self.abi in V8_LIKE:
            return False
        if policy in ("unspecified", "none"):
            return self.platform == "sw_protected"  # rfc-v5's scramble, seed's 0xab fill
        return True

    def convert(self, offset: int, size: int, to: str, flags: int) -> Outcome:
        self.opaque = []
        # 2. flags
        if self.abi in V8_LIKE:
            policy = "unspecified" if flags == 0 else None
        else:
            policy = (RFC_DECODE if self.abi == "rfc-v5" else SEED_DECODE).get(flags)
        if policy is None:
            return Outcome(errno="EINVAL")
        # 4./5. private memory (v8, rfc-v5: only x86 VM types have it; rfc-v5 lets
        # attributes = 0 through on any VM)
        if self.abi == "rfc-v5":
            if to == "private" and self.platform not in X86_PRIVATE:
                return Outcome(errno="EINVAL")
        elif not self.has_private or (self.abi in V8_LIKE and self.platform not in X86_PRIVATE):
            return Outcome(errno="EINVAL")
        # 6.-8. size, alignment, bounds
        if size == 0 or offset % PAGE or size % PAGE or offset + size > NPAGES * PAGE:
            return Outcome(errno="EINVAL")
        pages = range(offset // PAGE, (offset + size) // PAGE)
        changes = any(self.pages[i].private != (to == "private") for i in pages)
        if self.abi in V8_LIKE and not changes:
            return Outcome()  # nothing to change
        # 9. policy supported
        effect = self.result(to, policy)
        if effect == "X":
            return Outcome(errno="EOPNOTSUPP", error_offset=offset)
        # 10. pKVM consent once running
        if self.platform == "pkvm" and self.running:
            for i in pages:
                if self.pages[i].request != to:
                    return Outcome(errno="EPERM", error_offset=i * PAGE)
        # 10a. an injected allocation failure, where new attributes must be stored
        if changes and self.failslab:
            self.failslab -= 1
            return Outcome(errno="ENOMEM", error_offset=offset)
        # 11. pins refuse a to-private conversion
        if to == "private":
            for i in pages:
                if self.pages[i].pins:
                    return Outcome(errno="EAGAIN", error_offset=i * PAGE)
        # 12. attributes, then the content policy on allocated pages of the whole range
        # (a native effect only on pages that change state)
        whole_range = self.applied_by_kvm(policy)
        loses = (
            to == "private"
            and changes
            and self.running
            and self.abi in UNMAP_PRIVATE_TOO
            and self.platform in UNMAP_LOSES
        )
        for i in pages:
            page = self.pages[i]
            unchanged = page.private == (to == "private")
            page.private = to == "private"
            if page.request == to:
                page.request = None
            if loses and unchanged and page.data is not None:
                page.data = bytes(PAGE)
                continue
            if page.data is None or effect == "preserved" or (unchanged and not whole_range):
                continue
            if effect == "zeros":
                page.data = bytes(PAGE)
            elif effect == "fill":
                page.data = b"\xab" * PAGE
            else:
                self.opaque.append(i)
        return Outcome()

    def punch(self, first: int, count: int) -> Outcome:
        for index in range(first, min(NPAGES, first + count)):
            page = self.pages[index]
            page.data = None
            page.stale_pins += page.pins
            page.pins = 0
        return Outcome()

    def pin(self, first: int, count: int) -> Outcome:
        for index in range(first, first + count):
            if index >= NPAGES or self.pages[index].private:
                # §3 *Pins*: it holds nothing, but the shared pages it faulted in before
                # the one that failed stay allocated
                for page in self.pages[first:index]:
                    page.data = page.data if page.data is not None else bytes(PAGE)
                return Outcome(errno="EFAULT")
        for page in self.pages[first : first + count]:
            page.data = page.data if page.data is not None else bytes(PAGE)
            page.pins += 1
        return Outcome()

    def unpin(self, first: int, count: int) -> Outcome:
        chosen = self.pages[first : first + count]
        if first + count > NPAGES or any(not (p.pins or p.stale_pins) for p in chosen):
            return Outcome(errno="EINVAL")
        for page in chosen:
            if page.pins:
                page.pins -= 1
            else:
                page.stale_pins -= 1
        return Outcome()

    def launch(self) -> Outcome:
        if self.running:
            return Outcome(errno="EINVAL")
        self.running = True
        return Outcome()


PAGE_INDEX = st.integers(0, NPAGES - 1)
COUNT = st.integers(1, 2)


class Refinement(RuleBasedStateMachine):
    """Model and reference, step by step."""

    model: ModelMachine
    ref: Reference

    @initialize(
        platform=st.sampled_from(["sw_protected", "pkvm", "tdx", "snp", "cca", "default"]),
        abi=st.sampled_from(["seed", "iteration2", "rfc-v5", "v8", "v13"]),
        shared=st.booleans(),
    )
    def start(self, platform: str, abi: str, shared: bool) -> None:
        flags = GUEST_MEMFD_FLAG_MMAP | (GUEST_MEMFD_FLAG_INIT_SHARED if shared else 0)
        self.model = ModelMachine(platform, abi, NPAGES * PAGE, flags)
        self.ref = Reference(platform, abi, [RefPage(private=not shared) for _ in range(NPAGES)])

    def same(self, got: Outcome, want: Outcome) -> None:
        assert (got.errno, got.error_offset, got.signal, got.data, got.exit) == (
            want.errno,
            want.error_offset,
            want.signal,
            want.data,
            want.exit,
        ), f"model {got} != reference {want}"

    @rule(page=PAGE_INDEX, start=st.integers(0, PAGE - 1), data=st.binary(min_size=1, max_size=16))
    def host_write(self, page: int, start: int, data: bytes) -> None:
        offset = min(page * PAGE + start, NPAGES * PAGE - len(data))
        self.same(self.model.host_write(offset, data), self.ref.host_access(offset, data, 0))

    @rule(page=PAGE_INDEX, start=st.integers(0, PAGE - 1), size=st.integers(1, 16))
    def host_read(self, page: int, start: int, size: int) -> None:
        offset = min(page * PAGE + start, NPAGES * PAGE - size)
        self.same(self.model.host_read(offset, size), self.ref.host_access(offset, None, size))

    @rule(
        page=PAGE_INDEX,
        start=st.integers(0, PAGE - 1),
        data=st.binary(min_size=1, max_size=16),
        access=st.sampled_from([None, "private", "shared"]),
    )
    def guest_write(self, page: int, start: int, data: bytes, access: str | None) -> None:
        offset = min(page * PAGE + start, NPAGES * PAGE - len(data))
        self.same(
            self.model.guest_write(offset, data, access), self.ref.guest_access(offset, data, 0, access)
        )

    @rule(
        page=PAGE_INDEX,
        start=st.integers(0, PAGE - 1),
        size=st.integers(1, 16),
        access=st.sampled_from([None, "private", "shared"]),
    )
    def guest_read(self, page: int, start: int, size: int, access: str | None) -> None:
        offset = min(page * PAGE + start, NPAGES * PAGE - size)
        self.same(
            self.model.guest_read(offset, size, access), self.ref.guest_access(offset, None, size, access)
        )

    def _convert(self, offset: int, size: int, to: str, flags: int) -> None:
        old = [p.data for p in self.ref.pages]
        attributes = PRIVATE_ATTR if to == "private" else 0
        got = self.model.convert(offset, size, attributes, flags)
        self.same(got, self.ref.convert(offset, size, to, flags))
        for index in self.ref.opaque:  # ciphertext / garbage: never the plaintext, never all zero
            data = self.model.gmem.peek(index * PAGE, PAGE)
            assert data != old[index] and any(data), f"page {index} after an opaque conversion"
            self.ref.pages[index].data = data

    @rule(
        first=PAGE_INDEX,
        count=st.integers(1, NPAGES),
        to=st.sampled_from(["private", "shared"]),
        policy=st.sampled_from(list(SEED_FLAGS)),
    )
    def convert(self, first: int, count: int, to: str, policy: str) -> None:
        count = min(count, NPAGES - first)
        self._convert(first * PAGE, count * PAGE, to, SEED_FLAGS[policy])

    @rule(first=PAGE_INDEX, count=COUNT)
    def preallocate(self, first: int, count: int) -> None:
        """``fallocate(KEEP_SIZE)``: nothing a reader or a policy sees (§3 *Allocated*)."""
        count = min(count, NPAGES - first)
        self.model.gmem.fallocate(1, first * PAGE, count * PAGE)

    @rule()
    def inject_enomem(self) -> None:
        self.model.vm.failslab += 1
        self.ref.failslab += 1

    @rule(
        first=st.integers(0, NPAGES),
        count=st.integers(0, NPAGES),
        to=st.sampled_from(["private", "shared"]),
        flags=st.sampled_from([*SEED_FLAGS.values(), 3, 6, 8, 1 << 63]),
        misalign=st.sampled_from([0, 1, 512]),
    )
    def convert_any(self, first: int, count: int, to: str, flags: int, misalign: int) -> None:
        """Arbitrary ranges and flags, mostly refused by §4 checks 2 and 6-8."""
        self._convert(first * PAGE + misalign, count * PAGE, to, flags)

    @rule(first=PAGE_INDEX, count=COUNT)
    def punch_hole(self, first: int, count: int) -> None:
        self.same(self.model.punch_hole(first * PAGE, count * PAGE), self.ref.punch(first, count))

    @rule(first=PAGE_INDEX, count=COUNT)
    def pin(self, first: int, count: int) -> None:
        self.same(self.model.pin(first * PAGE, count * PAGE), self.ref.pin(first, count))

    @rule(first=PAGE_INDEX, count=COUNT)
    def unpin(self, first: int, count: int) -> None:
        self.same(self.model.unpin(first * PAGE, count * PAGE), self.ref.unpin(first, count))

    @rule()
    def launch(self) -> None:
        self.same(self.model.launch(), self.ref.launch())

    @rule(first=PAGE_INDEX, count=COUNT, to=st.sampled_from(["private", "shared"]))
    def guest_request(self, first: int, count: int, to: str) -> None:
        direction = Direction.TO_PRIVATE if to == "private" else Direction.TO_SHARED
        got = self.model.guest_request(first * PAGE, count * PAGE, direction)
        self.same(got, self.ref.guest_request(first, count, to))

    @invariant()
    def pages_agree(self) -> None:
        if not hasattr(self, "ref"):
            return
        gmem = self.model.gmem
        for index, page in enumerate(self.ref.pages):
            assert gmem.is_private(index * PAGE) == page.private, f"page {index} attribute"
            want = page.data if page.data is not None else bytes(PAGE)
            assert gmem.peek(index * PAGE, PAGE) == want, f"page {index} contents"


TestRefinement = Refinement.TestCase
TestRefinement.settings = settings(max_examples=500, stateful_step_count=25, deadline=None)
