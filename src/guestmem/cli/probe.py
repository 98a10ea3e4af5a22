"""``guestmem probe``: what this kernel offers for guest_memfd work, and what it lacks with
the reason (see :mod:`guestmem.kvm.facts`). A missing feature, ``/dev/kvm`` itself included,
is a finding: the command exits 0."""

from __future__ import annotations

import argparse
from typing import Any

from guestmem import schemas
from guestmem.kvm.facts import FEATURES, Facts, probe
from guestmem.kvm.system import DEVICE
from guestmem.terminal import table


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "probe",
        help="show the kernel's KVM and guest_memfd facts",
        description="Probe /dev/kvm: API version, guest_memfd capabilities and flags, VM types, "
        "memory-attribute capabilities, whether KVM_SET_MEMORY_ATTRIBUTES2 exists, and whether "
        "guest code runs natively or in KVM's emulator, and each feature the kernel lacks with "
        "the reason. Exits 0, also when /dev/kvm is missing or unusable (that is a finding).",
        epilog="examples:\n  guestmem probe\n  guestmem probe --format json",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    parser.add_argument("--device", default=DEVICE, help=f"KVM device (default {DEVICE})")
    parser.set_defaults(func=run)


def _missing_rows(facts: Facts) -> list[tuple[str, str]]:
    return [
        (f"missing: {name}", f"{why} — needed for {FEATURES[name]}") for name, why in facts.missing.items()
    ]


def run(args: argparse.Namespace) -> int:
    facts = probe(args.device)
    if args.format == "json":
        schemas.dump("probe", facts.to_json())
        return 0
    if not facts.usable:
        unusable = [("device", facts.device), ("usable", f"no ({facts.reason})"), *_missing_rows(facts)]
        table(("fact", "value"), unusable, title="guestmem probe")
        return 0
    code = facts.guest_code
    runs = code.get("mode", "unknown")
    if "insn_emulation" in code:
        runs += f" (insn_emulation +{code['insn_emulation']} for {code['instructions']} guest instructions)"
    elif code.get("reason"):
        runs += f" ({code['reason']})"
    hypercall = facts.hypercall_exit
    rows: list[tuple[str, str]] = [
        ("device", facts.device),
        ("API version", str(facts.api_version)),
        ("VM types (KVM_CAP_VM_TYPES)", ", ".join(facts.vm_types)),
        ("guest_memfd flags (KVM_CAP_GUEST_MEMFD_FLAGS)", ", ".join(facts.guest_memfd_flags) or "none"),
        *((name, str(value)) for name, value in facts.capabilities.items()),
        (
            "proposed CAPs 245-251",
            ", ".join(f"{k}={v}" for k, v in facts.proposed_capabilities.items()),
        ),
        (
            "KVM_SET_MEMORY_ATTRIBUTES2 (size 0)",
            ", ".join(f"{fd} fd: {res}" for fd, res in facts.set_memory_attributes2.items()),
        ),
        (
            "in-place conversion",
            "yes" if facts.conversion_ioctl else f"no ({facts.conversion_skip_reason()})",
        ),
        *(
            (
                f"VM type {name}",
                f"private memory: {'yes' if f.get('private_memory') else 'no'} "
                f"(to-private: {f.get('to_private', f.get('error'))}; "
                f"CAP 250 = {f.get('memory_attributes')}, CAP 251 = {f.get('attributes2_flags')})",
            )
            for name, f in facts.vm_type_facts.items()
        ),
        ("series (from what the kernel answers)", facts.series or "none"),
        ("guest code", runs),
        (
            "guest hypercall exit",
            "works" if hypercall.get("works") else f"no ({hypercall.get('reason')})",
        ),
        ("pins (CONFIG_GUP_TEST)", facts.gup_test or "available"),
        *_missing_rows(facts),
    ]
    table(("fact", "value"), rows, title="guestmem probe")
    return 0
