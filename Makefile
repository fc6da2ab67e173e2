# nekzusd — make run: set up and run the daemon; make test: set up and pass the tests.
# Both install what they need (Debian packages, a venv under .venv) on a fresh Debian machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
CONFIG ?= etc/nekzusd.yaml
PYTEST_ARGS ?=

# Debian packages: the runtime needs none but a Docker engine to talk to; the tests start their own
# private dockerd and Podman, build busybox images, and drive headless Chromium.
RUN_DEBS := python3-venv docker.io
TEST_DEBS := python3-venv docker.io busybox-static podman runc docker-compose chromium iproute2 systemd \
	systemd-container mmdebstrap
# (systemd-container and mmdebstrap: tests/test_nspawn.py boots a minimal Debian under a real systemd.)

.PHONY: run test lint venv debs-run debs-test bench soak install uninstall clean wheelhouse deb

define install_debs
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi
endef

debs-run:
	$(call install_debs,$(RUN_DEBS))

debs-test:
	$(call install_debs,$(TEST_DEBS))

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

run: debs-run venv
	mkdir -p .state
	NEKZUSD_STATE_DIR=$${NEKZUSD_STATE_DIR:-.state} $(VENV)/bin/nekzusd serve --config $(CONFIG)

# pytest-xdist workers: most of the suite waits on engines, timeouts and subprocesses, not on the CPU, so
# several workers overlap those waits (each has its own engines; see tests/README.md). TEST_WORKERS=0 runs
# everything in one process. The 25 slowest tests are listed at the end of every run.
TEST_WORKERS ?= 4
test: debs-test venv lint
	$(PY) -m pytest -q -ra --durations=25 -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# Seconds, before the tests: the linter (ruff.toml: nekzusd/, bench/, tests/) and the type checker (setup.cfg [mypy]).
lint: venv
	$(PY) -m ruff check nekzusd bench tests
	$(PY) -m mypy

# Every benchmark against one private dockerd with 30 containers: one table, and bench/results.json.
bench: debs-test venv
	$(PY) -m bench

# Load, 200 WebSocket clients and engine kills against a real daemon; SOAK_SECONDS sizes it (default 600).
SOAK_SECONDS ?= 600
soak: debs-test venv
	$(PY) -m bench.soak --seconds $(SOAK_SECONDS)

# make install [PREFIX=/opt/nekzusd] [DESTDIR=/staging]: the daemon in its own venv under PREFIX, the
# config under /etc/nekzusd (an existing one is never overwritten), the unit under /etc/systemd/system.
# PIP_INSTALL_ARGS passes options to pip (e.g. --no-index --find-links=wheels/ on an offline machine).
PREFIX ?= /opt/nekzusd
CONFDIR ?= /etc/nekzusd
UNITDIR ?= /etc/systemd/system
PIP_INSTALL_ARGS ?=
INSTALL_ROOT := $(DESTDIR)$(PREFIX)
HAVE_SYSTEMD := $(shell [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ] && echo yes)

install:
	$(call install_debs,python3-venv)
	@case "$(PREFIX)" in /?*) ;; *) echo "PREFIX must be an absolute path" >&2; exit 2;; esac
	$(PYTHON) -m venv --clear $(INSTALL_ROOT)
	$(INSTALL_ROOT)/bin/pip install -q --disable-pip-version-check $(PIP_INSTALL_ARGS) .
	@# Staged into DESTDIR: scripts must name the final location, not the staging one.
	@if [ -n "$(DESTDIR)" ]; then \
		grep -rlI -- "$(INSTALL_ROOT)" $(INSTALL_ROOT)/bin $(INSTALL_ROOT)/pyvenv.cfg \
			| xargs -r sed -i "s|$(INSTALL_ROOT)|$(PREFIX)|g"; \
	fi
	install -d -m 0755 $(DESTDIR)$(CONFDIR) $(DESTDIR)$(UNITDIR)
	@if [ -e $(DESTDIR)$(CONFDIR)/nekzusd.yaml ]; then \
		echo "keeping the existing $(CONFDIR)/nekzusd.yaml"; \
	else \
		install -m 0644 etc/nekzusd.yaml $(DESTDIR)$(CONFDIR)/nekzusd.yaml; \
	fi
	sed "s|/opt/nekzusd|$(PREFIX)|g" systemd/nekzusd.service > $(DESTDIR)$(UNITDIR)/nekzusd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/nekzusd.service
	@if [ "$(HAVE_SYSTEMD)" = yes ]; then systemctl daemon-reload; fi
	@echo "installed; start with: systemctl enable --now nekzusd"

# Removes the venv and the unit; the config ($(CONFDIR)) and the state (/var/lib/nekzusd) stay.
uninstall:
	@if [ "$(HAVE_SYSTEMD)" = yes ]; then systemctl disable --now nekzusd.service || true; fi
	rm -f $(DESTDIR)$(UNITDIR)/nekzusd.service
	@if [ -f $(INSTALL_ROOT)/pyvenv.cfg ] && [ -e $(INSTALL_ROOT)/bin/nekzusd ]; then \
		rm -rf $(INSTALL_ROOT); \
	elif [ -e $(INSTALL_ROOT) ]; then \
		echo "$(INSTALL_ROOT) is not a nekzusd venv; not removing it" >&2; exit 1; \
	fi
	@if [ "$(HAVE_SYSTEMD)" = yes ]; then systemctl daemon-reload; fi
	@echo "kept $(CONFDIR) and /var/lib/nekzusd; remove them by hand to forget everything"

# make wheelhouse [WHEELS=wheels]: everything an offline `make install PIP_INSTALL_ARGS="--no-index
# --find-links=wheels/"` needs, gathered on a machine with an index: nekzusd's wheel, its dependencies, and
# the build backend (setuptools, wheel) pip needs to build nekzusd from this checkout in isolation.
WHEELS ?= wheels
wheelhouse: | $(VENV)/.installed
	$(PIP) wheel -q --disable-pip-version-check -w $(WHEELS) .
	$(PIP) download -q --disable-pip-version-check -d $(WHEELS) $$(sed -n 's/^requires = \[\(.*\)\]/\1/p' pyproject.toml | tr -d '",')

# make deb [DEB_PYTHON=/usr/bin/python3] [PIP_INSTALL_ARGS=...]: nekzusd_VERSION_ARCH.deb in DEBDIR, built
# with dpkg-deb alone. The venv is made by Debian's python3 (the one the package Depends on) and staged
# by `make install`; its compiled wheels (orjson, cryptography) make the package architecture-specific.
# gzip, not xz: xz alone took 170 s for the 120 MB venv on two busy cores; the .deb is 23 MB instead of 15 MB.
DEB_PYTHON ?= /usr/bin/python3
DEBDIR ?= build
DEB_MAINTAINER ?= nekzusd maintainers <nekzusd@localhost>
DEB_STAGE := $(DEBDIR)/deb-root

deb:
	@command -v dpkg-deb >/dev/null || { echo "make deb needs dpkg-deb (Debian's dpkg)" >&2; exit 2; }
	rm -rf $(DEB_STAGE)
	$(MAKE) --no-print-directory install DESTDIR=$(abspath $(DEB_STAGE)) PREFIX=/opt/nekzusd \
		UNITDIR=/lib/systemd/system PYTHON=$(DEB_PYTHON) PIP_INSTALL_ARGS="--no-compile $(PIP_INSTALL_ARGS)"
	find $(DEB_STAGE) -name __pycache__ -prune -exec rm -rf {} +
	$(DEB_STAGE)/opt/nekzusd/bin/python3 -m compileall -q -j0 -p / \
		-s $(abspath $(DEB_STAGE)) $(DEB_STAGE)/opt/nekzusd/lib
	install -d -m 0755 $(DEB_STAGE)/DEBIAN
	install -m 0755 packaging/deb/preinst packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm \
		$(DEB_STAGE)/DEBIAN/
	echo /etc/nekzusd/nekzusd.yaml > $(DEB_STAGE)/DEBIAN/conffiles
	@set -e; version=$$($(DEB_PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	next=$$($(DEB_PYTHON) -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))'); \
	sed -e "s|@VERSION@|$$(sed -n 's/^__version__ = "\(.*\)"/\1/p' nekzusd/__init__.py)|" \
		-e "s|@ARCH@|$$(dpkg --print-architecture)|" \
		-e "s|@SIZE@|$$(du -sk --exclude=DEBIAN $(DEB_STAGE) | cut -f1)|" \
		-e "s|@PYMIN@|$$version|" -e "s|@PYNEXT@|$$next|" -e "s|@MAINTAINER@|$(DEB_MAINTAINER)|" \
		packaging/deb/control.in > $(DEB_STAGE)/DEBIAN/control
	dpkg-deb --root-owner-group -Zgzip --build $(DEB_STAGE) $(DEBDIR)/
	rm -rf $(DEB_STAGE)

clean:
	rm -rf $(VENV) .state build *.egg-info
