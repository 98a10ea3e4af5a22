"""``guestmem probe``: the kernel's facts as text and JSON, and a clear failure without KVM."""

from __future__ import annotations

import argparse
import json

import pytest

from guestmem.cli import probe
from guestmem.kvm import Kvm
from guestmem.uapi.kvm import KVM_CAP_GUEST_MEMFD_FLAGS
from kvm_support import KVM_REASON


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    probe.register(parser.add_subparsers())
    args = parser.parse_args(["probe", *argv])
    code: int = args.func(args)
    return code


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_missing_device_fails_with_the_reason(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("--device", "/dev/no-such-kvm", "--format", fmt) == 1
    out, err = capsys.readouterr()
    assert "/dev/no-such-kvm: No such file or directory" in err
    if fmt == "json":
        assert json.loads(out) == {
            "schema": "guestmem.probe/1",
            "device": "/dev/no-such-kvm",
            "usable": False,
            "reason": "/dev/no-such-kvm: No such file or directory",
        }


@pytest.mark.kvm
def test_json_facts_match_the_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    if KVM_REASON is not None:
        pytest.skip(f"/dev/kvm unusable: {KVM_REASON}")
    assert _run("--format", "json") == 0
    facts = json.loads(capsys.readouterr().out)
    with Kvm() as kvm:
        assert facts["api_version"] == kvm.api_version()
        assert facts["capabilities"]["KVM_CAP_GUEST_MEMFD_FLAGS"] == kvm.check_extension(
            KVM_CAP_GUEST_MEMFD_FLAGS
        )
        assert ("default" in facts["vm_types"]) == bool(kvm.vm_types() & 1)
    assert set(facts["proposed_capabilities"]) == {str(n) for n in range(245, 252)}
    assert facts["conversion_ioctl"] == (facts["set_memory_attributes2"]["guest_memfd"] != "ENOTTY")
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
        assert facts["vm_type_facts"]["default"]["to_private"] == "ENOTTY"
    else:
        assert facts["series"] in ("v8", "rfc-v5")


@pytest.mark.kvm
def test_text_output_names_the_facts(capsys: pytest.CaptureFixture[str]) -> None:
    if KVM_REASON is not None:
        pytest.skip(f"/dev/kvm unusable: {KVM_REASON}")
    assert _run() == 0
    out = capsys.readouterr().out
    for needle in ("API version", "KVM_SET_MEMORY_ATTRIBUTES2", "in-place conversion", "guest code"):
        assert needle in out
