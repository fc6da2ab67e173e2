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
TEST_DEBS := python3-venv docker.io busybox-static podman runc docker-compose chromium iproute2 systemd

.PHONY: run test venv debs-run debs-test bench soak install uninstall clean

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

test: debs-test venv
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .state build *.egg-info
