"""``guestmem stress``: concurrent operations on guest_memfds, checked against the model
(:mod:`guestmem.stress.engine`), with fault injection (:mod:`guestmem.stress.inject`) and
the kernel log read for bug reports (:mod:`guestmem.stress.kmsg`)."""
