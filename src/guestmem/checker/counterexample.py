"""Counterexamples as runnable scenario files (TOML, the format ``guestmem run`` reads).

Every step carries the ``expect`` the model gave when the search found it, except the
step the counterexample is about, which carries what the property demands; replaying
the file therefore passes every step before it and fails exactly there.
"""

from __future__ import annotations

from typing import Any

from guestmem.checker.explore import Counterexample, Exploration
from guestmem.ops import toml
from guestmem.outfile import Directory


def file_name(exploration: Exploration, cx: Counterexample) -> str:
    variant = f"-{exploration.variant.replace('=', '-').lower()}" if exploration.variant else ""
    return f"{cx.platform}{variant}-{cx.abi}-{cx.prop.value}.toml"


def to_toml(exploration: Exploration, cx: Counterexample) -> str:
    """The scenario file of one counterexample."""
    claim = "claimed" if cx.claimed else f"not claimed by {cx.platform}"
    about = (
        f"Counterexample to {cx.prop.value} ({claim}) found by guestmem explore "
        f"(abi {cx.abi}, {cx.pages} pages, depth {exploration.depth}): {cx.message}. "
        f"Step {cx.fails_at + 1} fails on replay."
    )
    if exploration.variant:
        about += (
            f" Found on the ablation {cx.platform} with {exploration.variant}; on {cx.platform} itself "
            "an earlier step fails instead."
        )
    head: dict[str, Any] = {
        "name": file_name(exploration, cx).removesuffix(".toml"),
        "about": about,
        "platforms": [cx.platform],
        "abi": cx.abi,
        "pages": cx.pages,
        "init": cx.init,
    }
    steps = [{**op.fields(), "expect": expect} for op, expect in zip(cx.ops, cx.expects, strict=True)]
    comments = [
        f"step {number}" + (" — fails on replay" if number == cx.fails_at + 1 else "")
        for number in range(1, len(steps) + 1)
    ]
    return toml.document({**head, "step": steps}, comments)


def write(exploration: Exploration, cx: Counterexample, directory: Directory) -> str:
    """Write the scenario file of ``cx`` into ``directory``; the path written."""
    return directory.write(file_name(exploration, cx), to_toml(exploration, cx))
