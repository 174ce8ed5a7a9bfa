# Keel build entry points. `make demo` boots the probe guest; `make test` runs every test.
CARGO ?= cargo
BUILD_DIR ?= build
PROBE_DIR := $(BUILD_DIR)/probe
KEEL := target/release/keel
DEMO_CPUS ?= 2
DEMO_MEMORY ?= 512M

.PHONY: all keel probe demo test unit-test guest-test lint fmt bench clean

all: keel probe

keel:
	$(CARGO) build --release --locked -p vmm --bin keel

probe:
	resources/probe/build.sh $(PROBE_DIR)

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

# Unit tests, then the guest tests that boot the probe guest with keel on /dev/kvm.
test: keel probe lint
	KEEL_BIN=$(CURDIR)/$(KEEL) KEEL_PROBE_DIR=$(CURDIR)/$(PROBE_DIR) \
		$(CARGO) test --release --locked --workspace

bench: keel probe
	python3 resources/bench/startup.py $(KEEL)
	$(CARGO) build --release --locked -p vmm --bin keel-blkbench
	python3 resources/bench/blk.py --keel $(KEEL) --probe-dir $(PROBE_DIR)
	python3 resources/bench/memwalk.py --keel $(KEEL) --probe-dir $(PROBE_DIR)
	python3 resources/bench/clock.py --keel $(KEEL) --probe-dir $(PROBE_DIR)

clean:
	$(CARGO) clean
	rm -rf $(BUILD_DIR) resources/probe/target
