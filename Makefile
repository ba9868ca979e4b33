# nkframe developer entry points.  Every target that needs the environment depends on setup,
# which is idempotent: it installs only what is missing.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
# Every Debian package a test, the demo or the bench uses.  Tests that need one call
# tests/requires.py, which fails (not skips) under CI=true when it is missing.  mmdebstrap makes
# the private trixie chroot the vm-next tier builds its lease source (netdevsim.ko) in.
# libglib2.0-dev, ninja-build, m4, dpkg-dev: tools/qemu_afxdp.py's QEMU/libxdp build.
APT_PACKAGES := clang llvm libbpf-dev libxdp-dev libelf-dev zlib1g-dev pkg-config mmdebstrap \
                iproute2 kmod qemu-system-x86 iperf3 python3-venv busybox-static graphviz \
                containernetworking-plugins podman runc iptables nftables iputils-ping \
                libglib2.0-dev ninja-build m4 dpkg-dev libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600
KERNEL ?= 6.12
K ?=

.PHONY: setup demo test test-unit test-host test-vm bench clean qemu-afxdp

setup: $(VENV)/.installed

$(VENV)/.apt-ok: Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  $(APT_GET) update -qq && $(APT_GET) install -y -qq $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

$(VENV)/.installed: $(VENV)/.apt-ok pyproject.toml setup.py $(wildcard plugins/*/__init__.py) $(wildcard nkframe/_bpf/*.py nkframe/_bpf/decl/*.h bpf/*.c bpf/include/*.h nkframe/cni/shim.c)
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[test,bench]'
	@touch $@

demo: setup
	$(VENV)/bin/nkframe demo

test: setup qemu-afxdp
	@tests/run-tiers

test-unit: setup
	$(VENV)/bin/pytest tests -m 'not root' $(K)

test-host: setup qemu-afxdp
	$(VENV)/bin/pytest tests -m root $(K)

test-vm: setup
	$(PY) -m tools.vm test --kernel $(KERNEL) -- $(K)

bench: setup
	$(PY) bench/run.py

# qemu-system-x86_64 with -netdev af-xdp, built once from Debian's sources into ~/.cache/nkframe/qemu
# (tests/host/test_qemu_afxdp.py needs it; cold ~10 min on 2 cores, then ~2 s to check versions).
qemu-afxdp: $(VENV)/.apt-ok
	python3 tools/qemu_afxdp.py build

clean:
	rm -rf build *.egg-info nkframe/_objs nkframe/_bpf/_lib*.so nkframe/_bpf/_lib.c
