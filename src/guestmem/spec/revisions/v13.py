"""``v13``: the series as applied for Linux 7.4 (2026-09-10; docs/semantics.md §1 and
*From v8 to v13*).

Everything is ``v8``'s but one rule the model can observe:

- A conversion drops the mappings its direction calls for: to-private the shared ones,
  to-shared the private ones. A to-private conversion of a mixed range therefore leaves
  the already-private pages mapped in the guest and their contents where they were, on
  every platform (§3 *Mixed ranges*).

The other differences (a DMA-pinned or still-mapped folio refuses a to-private
conversion before its reference count is looked at, the LRU drain is per folio, the
``make_shared``/``make_private`` arch hooks, guest_memfd-only memslots) give the same
answers in the model as ``v8``'s rules. Where the stored code is silent (ioctl number,
capability number, the module parameter's default) the model keeps ``v8``'s values (§8).
"""

from __future__ import annotations

from guestmem.spec.revisions.v8 import V8


class V13(V8):
    name = "v13"
    title = "in-place conversion v13, applied for 7.4: unmaps by direction (2026-09-10)"
    unmaps_private_on_to_private = False
