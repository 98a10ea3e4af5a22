"""``guestmem probe``: the kernel's facts as text and JSON; without a usable KVM, the reason
as a finding (exit 0). tests/test_host_kinds.py puts it on every kind of host."""

from __future__ import annotations

import argparse
import json

import pytest

from guestmem.cli import probe
from guestmem.kvm import Kvm
from guestmem.uapi.kvm import KVM_CAP_GUEST_MEMFD_FLAGS
from kvm_support import needs


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    probe.register(parser.add_subparsers())
    args = parser.parse_args(["probe", *argv])
    code: int = args.func(args)
    return code


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_missing_device_is_reported_with_the_reason(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("--device", "/dev/no-such-kvm", "--format", fmt) == 0
    out, err = capsys.readouterr()
    assert err == ""
    why = "/dev/no-such-kvm: No such file or directory"
    if fmt == "json":
        assert json.loads(out) == {
            "schema": "guestmem.probe/1",
            "device": "/dev/no-such-kvm",
            "usable": False,
            "reason": why,
            "missing": {"kvm": why},
        }
    else:
        assert f"no ({why})" in out and "missing: kvm" in out


@pytest.mark.kvm
@needs("kvm")
def test_json_facts_match_the_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("--format", "json") == 0
    facts = json.loads(capsys.readouterr().out)
    with Kvm() as kvm:
        assert facts["api_version"] == kvm.api_version()
        assert facts["capabilities"]["KVM_CAP_GUEST_MEMFD_FLAGS"] == kvm.check_extension(
            KVM_CAP_GUEST_MEMFD_FLAGS
        )
        assert ("default" in facts["vm_types"]) == bool(kvm.vm_types() & 1)
    assert set(facts["proposed_capabilities"]) == {str(n) for n in range(245, 252)}
    gmem = facts["capabilities"]["KVM_CAP_GUEST_MEMFD"] == 1
    assert ("guest_memfd" in facts["missing"]) == (not gmem)
    if gmem:
        assert facts["conversion_ioctl"] == (facts["set_memory_attributes2"]["guest_memfd"] != "ENOTTY")
    else:  # nothing to issue the conversion on: absent, and why
        assert "guest_memfd" not in facts["set_memory_attributes2"] and not facts["conversion_ioctl"]
        assert "no guest_memfd" in facts["missing"]["set_memory_attributes2"]
    assert ("set_memory_attributes2" in facts["missing"]) == (not facts["conversion_ioctl"])
    assert ("sw_protected_vm" in facts["missing"]) == ("sw_protected" not in facts["vm_types"])
    assert ("hypercall_exit" in facts["missing"]) == (not facts["hypercall_exit"]["works"])
    assert ("gup_test" in facts["missing"]) == (facts["gup_test"] is not None)
    assert facts["guest_code"]["mode"] in ("emulated", "native", "partly emulated", "unknown")
    if facts["guest_code"]["mode"] == "emulated":
        assert facts["guest_code"]["insn_emulation"] >= facts["guest_code"]["instructions"]
    # every VM type offered was probed for private memory by a real to-private conversion
    assert set(facts["vm_type_facts"]) == set(facts["vm_types"])
    for name, found in facts["vm_type_facts"].items():
        assert found["private_memory"] == (found["to_private"] == "ok"), name
    assert facts["vm_type_facts"]["default"]["private_memory"] is False
    if not facts["conversion_ioctl"]:
        assert facts["series"] is None
        to_private = facts["vm_type_facts"]["default"]["to_private"]
        assert (to_private == "ENOTTY") if gmem else to_private.startswith("no guest_memfd")
    else:
        assert facts["series"] in ("v8", "rfc-v5")


@pytest.mark.kvm
@needs("kvm")
def test_text_output_names_the_facts(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run() == 0
    out = capsys.readouterr().out
    for needle in ("API version", "KVM_SET_MEMORY_ATTRIBUTES2", "in-place conversion", "guest code"):
        assert needle in out
