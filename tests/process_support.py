"""Processes a test started, found again by a tag in their environment: whatever they forked
or spawned carries it too, so a test can tell that nothing it started outlived it."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def new_tag() -> dict[str, str]:
    """An environment entry to add to a command's environment."""
    return {"GUESTMEM_TEST_TAG": uuid.uuid4().hex}


def tagged(tag: dict[str, str]) -> list[int]:
    """The live processes (zombies left out) whose environment holds ``tag``."""
    ((name, value),) = tag.items()
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found
