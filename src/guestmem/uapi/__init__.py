"""The raw KVM UAPI: ioctl numbers, constants and ctypes structures, nothing else.

Kept apart from the handle objects in :mod:`guestmem.kvm` and from the model, in the
manner of rust-vmm's ``kvm-bindings``. Every layout is checked by size and offset in
``tests/test_uapi.py``; the numbers follow ``include/uapi/linux/kvm.h`` (Linux 6.18) and,
for the proposed conversion ioctl, the posted in-place conversion series (docs/semantics.md §7, §9).
"""
