"""The specification as readable code: what each platform can do and what each ABI
revision of ``KVM_SET_MEMORY_ATTRIBUTES2`` asks of it.

Nothing here holds state or touches memory; :mod:`guestmem.model` executes it.
``platforms/`` has one module per confidential-computing platform, ``revisions/`` one
module per ABI revision, with small diffs between them (docs/semantics.md §1-§3).
"""
