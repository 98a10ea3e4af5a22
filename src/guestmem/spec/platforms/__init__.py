"""One module per platform; :data:`PLATFORMS` lists them in the order reports use."""

from __future__ import annotations

from guestmem.spec.platforms import cca, default, pkvm, snp, sw_protected, tdx
from guestmem.spec.platforms.base import Platform

PLATFORMS: dict[str, Platform] = {
    p.name: p
    for p in (
        sw_protected.PLATFORM,
        pkvm.PLATFORM,
        tdx.PLATFORM,
        snp.PLATFORM,
        cca.PLATFORM,
        default.PLATFORM,
    )
}


def get(name: str) -> Platform:
    """The platform called ``name``; ``KeyError`` names the choices."""
    try:
        return PLATFORMS[name]
    except KeyError:
        raise KeyError(f"unknown platform {name!r} (choose from {', '.join(PLATFORMS)})") from None


__all__ = ["PLATFORMS", "Platform", "get"]
