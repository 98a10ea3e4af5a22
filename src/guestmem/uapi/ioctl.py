"""Linux ioctl request-number arithmetic (``include/uapi/asm-generic/ioctl.h``, x86-64)."""

from __future__ import annotations

IOC_NONE = 0
IOC_WRITE = 1
IOC_READ = 2

_NRBITS = 8
_TYPEBITS = 8
_SIZEBITS = 14
_NRSHIFT = 0
_TYPESHIFT = _NRSHIFT + _NRBITS
_SIZESHIFT = _TYPESHIFT + _TYPEBITS
_DIRSHIFT = _SIZESHIFT + _SIZEBITS


def ioc(direction: int, type_: int, nr: int, size: int) -> int:
    """``_IOC(dir, type, nr, size)``; raises ``ValueError`` if a field does not fit."""
    if not 0 <= size < (1 << _SIZEBITS):
        raise ValueError(f"ioctl argument size {size} does not fit in {_SIZEBITS} bits")
    if not 0 <= nr < (1 << _NRBITS) or not 0 <= type_ < (1 << _TYPEBITS):
        raise ValueError(f"ioctl type {type_:#x} / nr {nr:#x} out of range")
    return (direction << _DIRSHIFT) | (size << _SIZESHIFT) | (type_ << _TYPESHIFT) | (nr << _NRSHIFT)


def io(type_: int, nr: int) -> int:
    """``_IO(type, nr)``: no argument struct."""
    return ioc(IOC_NONE, type_, nr, 0)


def ior(type_: int, nr: int, size: int) -> int:
    """``_IOR(type, nr, T)`` with ``size = sizeof(T)``: the kernel writes the argument."""
    return ioc(IOC_READ, type_, nr, size)


def iow(type_: int, nr: int, size: int) -> int:
    """``_IOW(type, nr, T)``: the kernel reads the argument."""
    return ioc(IOC_WRITE, type_, nr, size)


def iowr(type_: int, nr: int, size: int) -> int:
    """``_IOWR(type, nr, T)``: the kernel reads and writes the argument."""
    return ioc(IOC_READ | IOC_WRITE, type_, nr, size)


def decode(request: int) -> tuple[int, int, int, int]:
    """Split a request number into ``(direction, type, nr, size)``."""
    return (
        (request >> _DIRSHIFT) & 0x3,
        (request >> _TYPESHIFT) & ((1 << _TYPEBITS) - 1),
        (request >> _NRSHIFT) & ((1 << _NRBITS) - 1),
        (request >> _SIZESHIFT) & ((1 << _SIZEBITS) - 1),
    )
