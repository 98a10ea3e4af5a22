/*
 * kvm_loop: the C baseline of guestmem's kvm_run_vs_c benchmark.
 *
 * usage: kvm_loop ROUNDS HEXCODE PORT [LOAD_ADDR [MEMORY]]
 *
 * Creates a default VM (type 0) with one vCPU in real mode, loads the guest code given
 * as hex at LOAD_ADDR (default 0x1000) in a 2 MiB memslot backed by MEMORY: "guest_memfd",
 * a guest_memfd created with MMAP|INIT_SHARED and mapped MAP_SHARED (kvm-here.md
 * section 5), or "anonymous", shared anonymous memory. Without MEMORY it takes a
 * guest_memfd where the kernel makes one, else anonymous memory; the Python side of the
 * benchmark names the memory it runs on, so both sides run on the same. Then it times ROUNDS calls of
 * KVM_RUN, each of which must exit with KVM_EXIT_IO on PORT (the guest's `out` loop).
 * Prints one JSON line: {"rounds": N, "ns": total, "memory": "guest_memfd"|"anonymous"}.
 *
 * Self-contained: the installed UAPI headers may predate guest_memfd, so the few
 * structures and ioctl numbers used are spelled out here (docs/semantics.md
 * section 9, kvm-here.md section 6).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define KVM_GET_API_VERSION 0xae00
#define KVM_CREATE_VM 0xae01
#define KVM_CHECK_EXTENSION 0xae03
#define KVM_GET_VCPU_MMAP_SIZE 0xae04
#define KVM_CREATE_VCPU 0xae41
#define KVM_SET_USER_MEMORY_REGION 0x4020ae46
#define KVM_SET_USER_MEMORY_REGION2 0x40a0ae49
#define KVM_CREATE_GUEST_MEMFD 0xc040aed4
#define KVM_RUN 0xae80
#define KVM_GET_REGS 0x8090ae81
#define KVM_SET_REGS 0x4090ae82
#define KVM_GET_SREGS 0x8138ae83
#define KVM_SET_SREGS 0x4138ae84

#define KVM_CAP_USER_MEMORY2 231
#define KVM_CAP_GUEST_MEMFD 234
#define KVM_MEM_GUEST_MEMFD (1u << 2)
#define GUEST_MEMFD_FLAG_MMAP (1ull << 0)
#define GUEST_MEMFD_FLAG_INIT_SHARED (1ull << 1)
#define KVM_EXIT_IO 2

#define MEM_SIZE (2u << 20)

struct region {
	uint32_t slot, flags;
	uint64_t guest_phys_addr, memory_size, userspace_addr;
};

struct region2 {
	uint32_t slot, flags;
	uint64_t guest_phys_addr, memory_size, userspace_addr;
	uint64_t guest_memfd_offset;
	uint32_t guest_memfd, pad1;
	uint64_t pad2[14];
};

struct create_gmem {
	uint64_t size, flags, reserved[6];
};

struct regs {
	uint64_t gpr[16], rip, rflags;
};

struct segment {
	uint64_t base;
	uint32_t limit;
	uint16_t selector;
	uint8_t type, present, dpl, db, s, l, g, avl, unusable, padding;
};

struct sregs {
	struct segment seg[8]; /* cs ds es fs gs ss tr ldt */
	uint8_t rest[312 - 8 * sizeof(struct segment)];
};

struct run_io {
	uint8_t direction, size;
	uint16_t port;
	uint32_t count;
	uint64_t data_offset;
};

static void die(const char *what)
{
	fprintf(stderr, "kvm_loop: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int xioctl(int fd, unsigned long req, void *arg, const char *what)
{
	int r = ioctl(fd, req, arg);
	if (r < 0)
		die(what);
	return r;
}

static size_t parse_hex(const char *hex, uint8_t *out, size_t cap)
{
	size_t n = strlen(hex) / 2;
	if (strlen(hex) % 2 || n == 0 || n > cap) {
		fprintf(stderr, "kvm_loop: bad HEXCODE\n");
		exit(2);
	}
	for (size_t i = 0; i < n; i++) {
		unsigned int byte;
		if (sscanf(hex + 2 * i, "%2x", &byte) != 1) {
			fprintf(stderr, "kvm_loop: bad HEXCODE\n");
			exit(2);
		}
		out[i] = (uint8_t)byte;
	}
	return n;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: kvm_loop ROUNDS HEXCODE PORT [LOAD_ADDR [MEMORY]]\n");
		return 2;
	}
	long rounds = strtol(argv[1], NULL, 0);
	long port = strtol(argv[3], NULL, 0);
	unsigned long load = argc > 4 ? strtoul(argv[4], NULL, 0) : 0x1000;
	const char *want = argc > 5 ? argv[5] : NULL;
	if (rounds <= 0 || load >= MEM_SIZE - 4096 ||
	    (want && strcmp(want, "guest_memfd") && strcmp(want, "anonymous"))) {
		fprintf(stderr, "kvm_loop: bad ROUNDS, LOAD_ADDR or MEMORY\n");
		return 2;
	}

	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("open /dev/kvm");
	if (ioctl(kvm, KVM_GET_API_VERSION, 0) != 12)
		die("KVM_GET_API_VERSION");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM");

	const char *memory = "anonymous";
	uint8_t *mem = MAP_FAILED;
	if (want && !strcmp(want, "guest_memfd") &&
	    (ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_GUEST_MEMFD) <= 0 ||
	     ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY2) <= 0)) {
		errno = ENOTTY;
		die("KVM_CAP_GUEST_MEMFD");
	}
	if ((!want || !strcmp(want, "guest_memfd")) &&
	    ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_GUEST_MEMFD) > 0 &&
	    ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY2) > 0) {
		struct create_gmem cg = {.size = MEM_SIZE,
					 .flags = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED};
		int gmem = ioctl(vm, KVM_CREATE_GUEST_MEMFD, &cg);
		if (gmem < 0 && want)
			die("KVM_CREATE_GUEST_MEMFD");
		if (gmem >= 0) {
			mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, gmem, 0);
			if (mem == MAP_FAILED)
				die("mmap guest_memfd");
			struct region2 r = {.slot = 0,
					    .flags = KVM_MEM_GUEST_MEMFD,
					    .guest_phys_addr = 0,
					    .memory_size = MEM_SIZE,
					    .userspace_addr = (uint64_t)(uintptr_t)mem,
					    .guest_memfd_offset = 0,
					    .guest_memfd = (uint32_t)gmem};
			xioctl(vm, KVM_SET_USER_MEMORY_REGION2, &r, "KVM_SET_USER_MEMORY_REGION2");
			memory = "guest_memfd";
		}
	}
	if (mem == MAP_FAILED) {
		mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		if (mem == MAP_FAILED)
			die("mmap");
		struct region r = {.slot = 0,
				   .flags = 0,
				   .guest_phys_addr = 0,
				   .memory_size = MEM_SIZE,
				   .userspace_addr = (uint64_t)(uintptr_t)mem};
		xioctl(vm, KVM_SET_USER_MEMORY_REGION, &r, "KVM_SET_USER_MEMORY_REGION");
	}
	parse_hex(argv[2], mem + load, MEM_SIZE - load);

	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die("KVM_CREATE_VCPU");
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size <= 0)
		die("KVM_GET_VCPU_MMAP_SIZE");
	uint8_t *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run");

	struct sregs sregs;
	xioctl(vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
	sregs.seg[0].base = 0;
	sregs.seg[0].selector = 0;
	xioctl(vcpu, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");
	struct regs regs;
	memset(&regs, 0, sizeof(regs));
	regs.rip = load;
	regs.rflags = 2;
	xioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");

	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (long i = 0; i < rounds; i++) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0)
			die("KVM_RUN");
		uint32_t reason = *(uint32_t *)(run + 8);
		const struct run_io *io = (const struct run_io *)(run + 32);
		if (reason != KVM_EXIT_IO || io->port != port) {
			fprintf(stderr, "kvm_loop: round %ld: exit reason %u port %u\n", i, reason,
				(unsigned)io->port);
			return 1;
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	long long ns = (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
	printf("{\"rounds\": %ld, \"ns\": %lld, \"memory\": \"%s\"}\n", rounds, ns, memory);
	return 0;
}
