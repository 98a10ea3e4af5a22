"""Benchmarks: the model against the kernel doing comparable work and against memory speed.

Each figure is a median ratio model/baseline from interleaved repetitions, or an absolute
value, with a target (docs/bench.md explains each one and shows a recent run):

- ``convert_1tib_vs_4k``: converting 1 TiB vs 4 KiB of unallocated memory, both in the model (≤ 3);
- ``zero_vs_punch_hole``: ZERO over 1 GiB of written pages vs a real guest_memfd punch (≤ 1.5);
- ``fill_vs_memset``: the NONE ``0xab`` fill over 256 MiB vs one ``memset`` (≤ 1.5);
- ``host_access_vs_mmap``: 4 KiB host read + write via the model vs a raw ``mmap`` (≤ 3);
- ``kvm_run_vs_c``: ``KVM_RUN`` round trips from the Python bindings vs C (≤ 1.5);
- ``explore_states_per_cpu_s``: states generated per CPU-second by the default exploration
  on one worker, over at least 3 CPU-seconds (≥ 100 000);
- ``analyze_all_cpu_s``: CPU seconds of ``guestmem analyze --abi all`` (≤ 40);
- ``explore_3_pages_cpu_s``: the largest CPU seconds of one platform explored at 3 pages,
  depth 6 (≤ 60);
- ``explore_ray_efficiency``: states per CPU-second on Ray with 2 workers over the local
  engine with 2 workers, snp at 3 pages, depth 7, every Ray process's CPU counted (≥ 0.7);
- ``rss_1tib_mib``: peak RSS of a process converting a 1 TiB model guest_memfd 10 000
  times and writing 10 000 pages of it (≤ 150 MiB).

Every figure's JSON carries its ``unit`` and whether the target is a ``ceiling`` or a
``floor`` (``target_is``).

The registry and the runner are in :mod:`guestmem.bench.suite`. This package itself
imports nothing, so the fresh process of :mod:`guestmem.bench.rss` loads only the model.
"""
