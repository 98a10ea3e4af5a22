"""The checker: security properties over traces, exhaustive exploration of the model,
counterexamples as runnable scenarios, and the ABI analysis a UAPI reviewer reads.

:mod:`~guestmem.checker.properties` states docs/semantics.md §5 as predicates over a trace;
:mod:`~guestmem.checker.explore` searches every operation sequence up to a depth;
:mod:`~guestmem.checker.counterexample` writes the shortest failing sequence as a
scenario file; :mod:`~guestmem.checker.analyze` tabulates revisions for review.
"""
