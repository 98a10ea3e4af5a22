"""``guestmem vm``: boot a kernel under QEMU and run one command inside (see :mod:`guestmem.vmrun`)."""

from __future__ import annotations

import argparse
import sys

from guestmem import progress, vmrun
from guestmem.cli import UsageError
from guestmem.cli.run import positive_seconds
from guestmem.printable import printable

EXAMPLE = f"""\
examples:
  guestmem vm --kernel ../shared/kernel/v8/bzImage -- guestmem probe
  guestmem vm --kernel arch/x86/boot/bzImage -- guestmem check --backend kvm
  guestmem vm --timeout 600 -- python3 -m pytest tests/test_kernel_suite.py

The host's root filesystem is shared read-only; $GUESTMEM_SCRATCH (also $TMPDIR) is a
writable host directory (--scratch, else a temporary one). A command starting with
'guestmem' runs this guestmem with this Python. Its stdout and stderr come back apart,
as they are written, through two virtio-serial ports of the runner's own (no udev
needed), to a terminal, a pipe or a file alike.

exit status: the command's, or
  {vmrun.EXIT_OUTPUT_LOST}  the command's output could not reach the host (the VM lacks the
       ports, or they closed before the output's end)
  {vmrun.EXIT_BAD_KERNEL}  the kernel file is missing or not an x86 bzImage
  {vmrun.EXIT_NO_QEMU}  QEMU (qemu-system-x86_64) is not installed
  {vmrun.EXIT_NO_VIRTME}  virtme-ng (vng) is not installed: pip install -e '.[vm]'
  {vmrun.EXIT_NO_IOCTL}  the kernel has no KVM_SET_MEMORY_ATTRIBUTES2 or no usable KVM inside
  {vmrun.EXIT_TIMEOUT}  the command did not finish within --timeout
  {vmrun.EXIT_BOOT}  the kernel did not boot in time, or the VM died before the command ended
  130  interrupted (Ctrl-C); the VM is stopped
  143  SIGTERM received (129: SIGHUP); the VM is stopped"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "vm",
        help="boot a kernel under QEMU (virtme-ng) and run a command inside",
        description="Boot KERNEL under QEMU with virtme-ng (KVM when the host can nest, TCG "
        "otherwise), check that it has KVM_SET_MEMORY_ATTRIBUTES2, run COMMAND inside with "
        "the host's root filesystem shared read-only and a writable scratch directory, "
        "stream its output and exit with its status.",
        epilog=EXAMPLE,
    )
    default = vmrun.default_kernel()
    parser.add_argument(
        "--kernel",
        default=default,
        metavar="BZIMAGE",
        help="the kernel to boot (default: $GUESTMEM_KERNEL or the v8 test kernel"
        + (f": {printable(default)})" if default is not None else ", none here)"),
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=vmrun.DEFAULT_TIMEOUT,
        metavar="S",
        help=f"stop the VM if COMMAND runs longer (default {vmrun.DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--boot-timeout",
        type=positive_seconds,
        default=vmrun.DEFAULT_BOOT_TIMEOUT,
        metavar="S",
        help=f"stop the VM if it has not booted by then (default {vmrun.DEFAULT_BOOT_TIMEOUT:g})",
    )
    parser.add_argument("--memory", default=vmrun.DEFAULT_MEMORY, help="VM memory (default %(default)s)")
    parser.add_argument("--cpus", type=int, default=2, help="VM CPUs (default %(default)s)")
    parser.add_argument("--accel", choices=("kvm", "tcg"), default=None, help="force KVM or TCG")
    parser.add_argument(
        "--append", action="append", default=[], metavar="ARG", help="extra kernel command-line argument"
    )
    parser.add_argument("--scratch", default=None, metavar="DIR", help="host directory shared read-write")
    parser.add_argument(
        "--no-root-cache",
        action="store_true",
        help="do not let the guest cache the host's files (slower; a file changed on the host "
        "during the run is then seen changed inside)",
    )
    parser.add_argument(
        "--any-kernel",
        action="store_true",
        help="run COMMAND even if the kernel lacks KVM_SET_MEMORY_ATTRIBUTES2",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("vm: no command given (guestmem vm [options] -- COMMAND ...)")
    try:
        if args.kernel is None:
            raise vmrun.BadKernel("no kernel: give --kernel BZIMAGE (or set $GUESTMEM_KERNEL)")
        return vmrun.VmRun(
            kernel=args.kernel,
            command=command,
            timeout=args.timeout,
            boot_timeout=args.boot_timeout,
            memory=args.memory,
            cpus=args.cpus,
            append=args.append,
            require_ioctl=not args.any_kernel,
            scratch=args.scratch,
            accel=args.accel,
            root_cache=not args.no_root_cache,
        ).execute()
    except vmrun.VmError as err:
        print(f"guestmem vm: {err}", file=sys.stderr)
        return err.status
    except KeyboardInterrupt as stop:
        by = f"{stop} received" if isinstance(stop, progress.Stopped) else "interrupted"
        print(f"guestmem vm: {by}; the VM was stopped", file=sys.stderr)
        return progress.exit_status(stop)
