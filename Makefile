# kata-cc entry points. `make demo` and `make test` are the two set-up commands on a fresh machine:
# both install the host dependencies, build everything and bake the guest image first.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

CARGO ?= cargo
TARGET := x86_64-unknown-linux-gnu
RELEASE := target/$(TARGET)/release
# The guest's binaries: the `guest` profile (release + LTO, see Cargo.toml).
GUEST_BIN := target/$(TARGET)/guest
GUEST := build/guest
CONFIG := build/configuration.toml
# The policy baked into the measured rootfs (hack/guest/policy/<name>.rego): allow-all or no-exec-no-logs.
DEFAULT_POLICY ?= allow-all

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
CONFDIR ?= /etc/kata-cc
SHAREDIR ?= /usr/share/kata-cc
DESTDIR ?=
# `make install` adds the kata-cc runtime handler (Kubernetes, CRI) to this containerd config;
# `kata-cc install` keeps the file as it was in <file>.kata-cc.bak.
CONTAINERD_CONFIG ?= /etc/containerd/config.toml

.PHONY: all deps kernel build image demo test lint e2e bench install uninstall clean

all: build

deps:
	bash hack/deps.sh

# The guest kernel, built once per input set and cached outside the checkout (hack/kernel.sh).
kernel:
	bash hack/kernel.sh

build:
	$(CARGO) build --release --workspace

image: build kernel
	$(CARGO) build --profile guest -p kata-cc-guest --bins
	bash hack/bake-image.sh --agent $(GUEST_BIN)/kata-cc-agent --init $(GUEST_BIN)/kata-cc-init --out $(GUEST) --default-policy $(DEFAULT_POLICY)

demo: deps build kernel image
	bash hack/demo.sh

# --all-features: the host tier's tests (kata-cc-tests/e2e) are linted too.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

# Unit tests and the host tier: the tests compiled only with the feature kata-cc-tests/e2e
# (root, real containerd, QEMU, the guest image and its checks in tests/tests/image.rs, the
# host tools of `make deps`). A plain `cargo test --workspace` runs the unit tier only. The e2e
# tests serialize themselves (locks in the harness); --test-threads=1 keeps their output
# readable too. They run the workspace's binaries of the same profile: `make build`'s.
# A test whose outside tool is missing (genpolicy: ../shared/tools/genpolicy or
# KATA_CC_GENPOLICY_DIR) claims nothing and leaves build/e2e/not-run/<test>: listed at the end.
e2e: image
	@rm -rf build/e2e/not-run
	rc=0; $(CARGO) test --release --workspace --no-fail-fast --features kata-cc-tests/e2e -- --test-threads=1 || rc=$$?; \
	if [ -d build/e2e/not-run ]; then echo "e2e: NOT RUN (these tests claimed nothing):"; cat build/e2e/not-run/*; fi; \
	exit $$rc

test: deps build kernel image lint e2e

# Benchmarks, not tests: figures printed and written as JSON under build/bench/ (needs the
# host dependencies and the guest image: `make test`'s set-up, or `make deps image`).
bench: build image
	bash hack/bench.sh

install:
	@test -x $(RELEASE)/containerd-shim-kata-cc-v2 -a -x $(RELEASE)/kata-cc || { echo "install: run make build first" >&2; exit 1; }
	@test -f $(GUEST)/manifest.json -a -f $(CONFIG) || { echo "install: run make image first" >&2; exit 1; }
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(CONFDIR) $(DESTDIR)$(SHAREDIR)
	install -m 0755 $(RELEASE)/containerd-shim-kata-cc-v2 $(RELEASE)/kata-cc $(DESTDIR)$(BINDIR)/
	install -m 0644 $(GUEST)/vmlinuz $(GUEST)/initrd.img $(GUEST)/rootfs.img $(GUEST)/cmdline $(GUEST)/manifest.json $(DESTDIR)$(SHAREDIR)/
	@# The baked config names the build dir; the installed one names the installed guest files.
	sed -e 's|$(CURDIR)/$(GUEST)/|$(SHAREDIR)/|g' $(CONFIG) > $(DESTDIR)$(CONFDIR)/configuration.toml.tmp
	mv -f $(DESTDIR)$(CONFDIR)/configuration.toml.tmp $(DESTDIR)$(CONFDIR)/configuration.toml
	chmod 0644 $(DESTDIR)$(CONFDIR)/configuration.toml
	@# Not for a staging DESTDIR: its containerd config is not this machine's.
	@if [ -n "$(DESTDIR)" ]; then \
		echo "install: DESTDIR is set: containerd's config left alone; on the node run: $(BINDIR)/kata-cc install --containerd-config $(CONTAINERD_CONFIG) --config $(CONFDIR)/configuration.toml --shim $(BINDIR)/containerd-shim-kata-cc-v2"; \
	else \
		$(BINDIR)/kata-cc install --containerd-config $(CONTAINERD_CONFIG) --config $(CONFDIR)/configuration.toml --shim $(BINDIR)/containerd-shim-kata-cc-v2; \
	fi

uninstall:
	@if [ -n "$(DESTDIR)" ]; then \
		echo "uninstall: DESTDIR is set: containerd's config left alone"; \
	elif [ -x $(BINDIR)/kata-cc ]; then \
		$(BINDIR)/kata-cc uninstall --containerd-config $(CONTAINERD_CONFIG); \
	else \
		echo "uninstall: no $(BINDIR)/kata-cc: containerd's config left alone"; \
	fi
	rm -f $(DESTDIR)$(BINDIR)/containerd-shim-kata-cc-v2 $(DESTDIR)$(BINDIR)/kata-cc
	rm -f $(DESTDIR)$(CONFDIR)/configuration.toml
	rm -rf $(DESTDIR)$(SHAREDIR)

clean:
	@# Private containerds of the demo or of interrupted tests: stopped by PID, mounts removed.
	@find build -name containerd.pid 2>/dev/null | while read -r p; do bash hack/containerd.sh stop "$$(dirname "$$p")"; done
	rm -rf build
	$(CARGO) clean
