# Keel build entry points. `make demo` boots the probe guest; `make test` runs every test.
CARGO ?= cargo
BUILD_DIR ?= build
PROBE_DIR := $(BUILD_DIR)/probe
GUEST_LINUX_DIR := $(BUILD_DIR)/guest-linux
FIRMWARE_DIR := $(BUILD_DIR)/firmware
KEEL := target/release/keel
DEMO_CPUS ?= 2
DEMO_MEMORY ?= 512M

.PHONY: all keel probe guest-linux rig-bin rig-probe-tests rig-image rig demo test unit-test guest-test lint fmt bench bench-fio bench-peers bench-snapshot clean fuzz fuzz-replay firmware

all: keel probe

keel:
	$(CARGO) build --release --locked -p keel --bin keel

probe:
	resources/probe/build.sh $(PROBE_DIR)

guest-linux:
	resources/guest-linux/build.sh $(GUEST_LINUX_DIR)

# edk2's Cloud Hypervisor firmware (PVH ELF with the UEFI Shell) from Debian's edk2 source
# package: $(FIRMWARE_DIR)/CLOUDHV.fd, cached (about 3 minutes the first time; needs root
# to add a deb-src entry and the build dependencies when they are missing).
firmware:
	resources/firmware/build.sh $(FIRMWARE_DIR)

# The Linux guest suite (rig/): keel-rig runs the named scenarios (all by default; `make rig
# RIG_SCENARIOS="boot-pvh-1cpu console-echo"`) directly on a host whose KVM has VT-x/AMD-V, or
# inside the nested rig's L1 (QEMU TCG + kvm_amd, resources/rig/) on PVM hosts, in one L1 boot.
RIG_DIR := $(BUILD_DIR)/rig
RIG := target/release/keel-rig
RIG_SCENARIOS ?=
RIG_ARGS ?=
rig-bin:
	$(CARGO) build --release --locked -p keel-rig --bin keel-rig

# The probe's platform tests (tests/) that the rig also runs on its production-like KVM.
RIG_PROBE_TESTS := probe_boot paravirt pci_host
RIG_PROBE_TEST_DIR := $(RIG_DIR)/probe-tests
rig-probe-tests:
	rm -rf $(RIG_PROBE_TEST_DIR) && mkdir -p $(RIG_PROBE_TEST_DIR)
	$(CARGO) test --release --locked -p keel-tests $(addprefix --test ,$(RIG_PROBE_TESTS)) --no-run \
		2>&1 | sed -n 's/^ *Executable tests\/\([a-z_]*\)\.rs (\(.*\))$$/\1 \2/p' | \
		while read -r name bin; do cp "$$bin" $(RIG_PROBE_TEST_DIR)/$$name; done
	test "$$(ls $(RIG_PROBE_TEST_DIR) | wc -l)" -eq $(words $(RIG_PROBE_TESTS))

# The firmware scenarios' files (rig/src/scenarios/firmware.rs): CLOUDHV.fd and GPT disk
# images with an EFI system partition (the Linux guest's EFI-stub kernel, Shell scripts).
RIG_FIRMWARE_DIR := $(RIG_DIR)/firmware
.PHONY: rig-firmware
rig-firmware: firmware guest-linux
	resources/firmware/rig-disks.sh $(RIG_FIRMWARE_DIR) $(FIRMWARE_DIR)/CLOUDHV.fd $(GUEST_LINUX_DIR)

rig-image: keel rig-bin guest-linux probe rig-probe-tests rig-firmware
	PROBE_DIR=$(PROBE_DIR) PROBE_TESTS=$(RIG_PROBE_TEST_DIR) FIRMWARE_DIR=$(RIG_FIRMWARE_DIR) \
		resources/rig/build.sh $(RIG_DIR) $(KEEL) $(RIG) $(GUEST_LINUX_DIR)

# The rig's host QEMU (L0, runs L1 on TCG): Debian's qemu-system-x86_64 of the installed
# version with resources/rig/qemu/cr8-bql.patch (without it QEMU aborts once a guest of L1 runs
# UEFI firmware); built once (2 to 5 minutes; needs root for apt), then cached.
RIG_QEMU_DIR := $(BUILD_DIR)/rig-qemu
.PHONY: rig-qemu
rig-qemu:
	resources/rig/qemu/build.sh $(RIG_QEMU_DIR)

rig: rig-image rig-qemu
	$(RIG) test --keel $(KEEL) --guest $(GUEST_LINUX_DIR) --work $(RIG_DIR)/work \
		--qemu "$$(command -v qemu-system-x86_64)" --fio-jobs resources/fio \
		--host-qemu $(RIG_QEMU_DIR)/bin/qemu-system-x86_64 \
		--probe $(PROBE_DIR) --probe-tests $(RIG_PROBE_TEST_DIR) --firmware $(RIG_FIRMWARE_DIR) \
		--rig-dir $(RIG_DIR) $(RIG_ARGS) $(RIG_SCENARIOS)

DEMO_DISK := $(BUILD_DIR)/demo-disk.img
DEMO_IO := bs=4k,iodepth=32,ios=20000
DEMO_CMDS := probe.cmd=cpus probe.cmd=pci \
	probe.cmd=blk:disk=0,rw=randwrite,$(DEMO_IO),verify=1 \
	probe.cmd=blk:disk=0,rw=randread,$(DEMO_IO),poll=1

# Boots the probe with a 64 MiB virtio-blk disk: it reports its CPUs and PCI devices, then
# writes (and verifies) and reads the disk at queue depth 32 from CPL3; keel prints its exit
# counters at the end.
demo: keel probe
	truncate -s 64M $(DEMO_DISK)
	$(KEEL) --kernel $(PROBE_DIR)/probe.elf --cpus boot=$(DEMO_CPUS) --memory size=$(DEMO_MEMORY) \
		--disk path=$(DEMO_DISK) --cmdline "$(DEMO_CMDS)" --log-level info --stats

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Unit tests, then the guest tests that boot the probe guest (and the Linux fio guest) with
# keel on this host's /dev/kvm, then the Linux guest suite (directly, or in the nested rig on
# PVM hosts). See README "Where each test runs".
test: keel probe guest-linux lint
	KEEL_BIN=$(CURDIR)/$(KEEL) KEEL_PROBE_DIR=$(CURDIR)/$(PROBE_DIR) \
		KEEL_GUEST_LINUX_DIR=$(CURDIR)/$(GUEST_LINUX_DIR) \
		$(CARGO) test --release --locked --workspace
	$(MAKE) fuzz-replay
	$(MAKE) rig

# Fuzzing (fuzz/, its own crate): `make fuzz` runs every target for FUZZ_SECONDS with cargo-fuzz
# (installed if missing; libFuzzer on the stable toolchain, no sanitizer) and grows the corpus;
# not part of `make test`, which only replays the committed corpus (`make fuzz-replay`, seconds).
FUZZ_TARGETS := vm_config_json cli_options http_request blk_request blk_queue virtio_pci snapshot_file
FUZZ_SECONDS ?= 120
fuzz:
	resources/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-replay:
	$(CARGO) build --release --locked --manifest-path fuzz/Cargo.toml --bins
	@for t in $(FUZZ_TARGETS); do \
		log=fuzz/target/replay-$$t.log; \
		fuzz/target/release/$$t -runs=0 fuzz/corpus/$$t >$$log 2>&1 || { cat $$log; exit 1; }; \
		echo "fuzz-replay $$t: $$(ls fuzz/corpus/$$t | wc -l) inputs, no crash"; \
	done

bench: keel probe
	python3 resources/bench/startup.py $(KEEL)
	$(CARGO) build --release --locked -p keel-bench --bin keel-blkbench
	python3 resources/bench/blk.py --keel $(KEEL) --probe-dir $(PROBE_DIR)
	python3 resources/bench/memwalk.py --keel $(KEEL) --probe-dir $(PROBE_DIR)
	python3 resources/bench/clock.py --keel $(KEEL) --probe-dir $(PROBE_DIR)
	python3 resources/bench/snapshot.py --keel $(KEEL) --probe-dir $(PROBE_DIR) $(SNAPSHOT_ARGS)

# Snapshot and restore of a 2 GiB probe guest (RAM mostly non-zero) against fio on the same
# file system, beside QEMU's migration to a file (about 4 minutes; needs root and fio;
# SNAPSHOT_ARGS="--dir PATH --rounds N" picks the file system and the rounds).
SNAPSHOT_ARGS ?=
bench-snapshot: keel probe
	python3 resources/bench/snapshot.py --keel $(KEEL) --probe-dir $(PROBE_DIR) $(SNAPSHOT_ARGS)

# Keel beside QEMU and raw io_uring where the VMM is the bottleneck: the probe guest's job on
# one file per backend (tmpfs, disk), 4K randread/randwrite at QD 1/32/128, 1 and 2 queues,
# interleaved rounds, medians and spread (about 30 minutes; PEERS_ARGS narrows it).
PEERS_ARGS ?=
bench-peers: keel probe
	$(CARGO) build --release --locked -p keel-bench --bin keel-blkbench
	python3 resources/bench/peers.py --keel $(KEEL) $(PEERS_ARGS)

# fio in a guest, Keel beside QEMU (iothread, aio=io_uring, cache=none) on the same guest,
# disks and job. The Linux guest needs VT-x/AMD-V: on a PVM host (its kernel instructions
# emulated) the probe guest runs the jobs instead, translated into its blk commands.
FIO_JOBS ?= resources/fio/randread-4k-qd64.fio resources/fio/randwrite-4k-qd32-7disks.fio \
	resources/fio/randread-4k-qd256-7disks.fio
FIO_GUEST ?= $(if $(wildcard /sys/module/kvm_pvm),probe,linux)
FIO_ARGS ?= --disk-size 1G --runtime 10 --cpus boot=2 --memory size=1G
bench-fio: keel probe guest-linux
	@for job in $(FIO_JOBS); do \
		$(KEEL) bench fio --guest $(FIO_GUEST) --job $$job --compare qemu $(FIO_ARGS) || exit 1; \
	done

clean:
	$(CARGO) clean
	rm -rf $(BUILD_DIR) resources/probe/target
