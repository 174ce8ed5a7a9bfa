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

demo: keel probe
	$(KEEL) --kernel $(PROBE_DIR)/probe.elf --cpus boot=$(DEMO_CPUS) --memory size=$(DEMO_MEMORY) --log-level info

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

clean:
	$(CARGO) clean
	rm -rf $(BUILD_DIR) resources/probe/target
