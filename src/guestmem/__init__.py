"""guestmem: guest_memfd private/shared conversions, modelled, run on KVM, and checked.

Layout: :mod:`guestmem.uapi` (raw KVM UAPI), :mod:`guestmem.spec` (platforms and ABI
revisions as readable code), :mod:`guestmem.model` (the executable model),
:mod:`guestmem.kvm` (real-kernel bindings), :mod:`guestmem.backend` (the model/kernel
seam), and the tools: scenarios, the VMM handler, the checker, reports and the CLI.
"""

__version__ = "0.1.0"
