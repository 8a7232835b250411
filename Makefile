# keyd — the two commands that matter: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv services deb-tools deb test lint unit integration demo bench migration clean

venv: $(STAMP)

# Creates/updates the venv from nothing; reinstalls when pyproject changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check keyd tests bench examples packaging alembic
	$(VENV)/bin/ruff format --check keyd tests bench examples packaging alembic
	$(VENV)/bin/mypy keyd

# What the integration tests need from the machine, installed/started if
# missing: PostgreSQL on 127.0.0.1:5432 (a service of this machine kind),
# systemd-analyze (for the unit-file checks) and Debian's chromium +
# chromium-driver (the status page's browser tests). OpenBao, aiosmtpd and
# the test issuer come from the venv and are started by the tests themselves.
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || { \
	    echo "make: starting PostgreSQL"; \
	    pg_ctlcluster --skip-systemctl-redirect "$$(ls /etc/postgresql | head -n1)" main start; \
	    for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; }
	@command -v systemd-analyze >/dev/null || { \
	    echo "make: installing systemd (for systemd-analyze)"; \
	    apt-get update -qq && $(APT_INSTALL) systemd; }
	@{ command -v chromium && command -v chromedriver; } >/dev/null || { \
	    echo "make: installing chromium and chromium-driver (for the status page tests)"; \
	    apt-get -o DPkg::Lock::Timeout=600 update -qq && $(APT_INSTALL) chromium chromium-driver; }

# What `make deb` and its test need from Debian: dpkg-dev (dpkg-shlibdeps),
# binutils (strip), lintian, debootstrap (the test's throw-away root), and
# python3-venv for the package's virtual environment. Installed if missing.
DEB_TOOLS := dpkg-dev binutils lintian debootstrap python3 python3-venv
deb-tools:
	@missing=$$(for p in $(DEB_TOOLS); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "make: installing" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
	        install -y -qq $$missing; fi

# The Debian package (docs/packaging.md), built from the wheel on this
# host's Debian release, checked by lintian (errors and unexplained
# warnings fail). DIST= picks the output directory.
DIST ?= dist
deb: venv deb-tools
	rm -rf $(DIST)/wheel && $(PY) -m build --wheel --outdir $(DIST)/wheel .
	$(PY) packaging/build_deb.py --wheel $$(ls $(DIST)/wheel/keyd-*.whl) --out $(DIST)
	lintian --fail-on error,warning $(DIST)/keyd_*.deb

# The whole suite: lint, types, unit and integration tests (real OpenBao,
# PostgreSQL, SMTP and authorization server; a missing service fails), and
# the slow packaging tests (sdist; `make deb` installed into a debootstrap
# root, which is cached in .cache/debroot/).
test: lint services deb-tools
	$(VENV)/bin/pytest -q tests

unit: venv
	$(VENV)/bin/pytest -q tests/unit

integration: venv
	$(VENV)/bin/pytest -q tests/integration

demo: venv
	$(PY) examples/demo.py

bench: venv
	$(PY) bench/mint.py
	$(PY) bench/scan.py
	$(PY) bench/probe.py
	$(PY) bench/scale.py

# Regenerate the initial migration after a model change (pre-1.0 only).
migration: venv
	$(PY) -m keyd.store.autogen

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
