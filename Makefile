# Every target is idempotent: a second run only checks what is already there.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEB_STAMP := .cache/debs.installed
DEBS := apache2 prometheus prometheus-alertmanager wrk redis-server

.PHONY: run test check lint fmt install debs bench bench-smoke bench-jobs soak clean cert

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests drive for real (Apache, Prometheus/promtool, wrk, Redis).
debs:
	@missing=""; for p in $(DEBS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# Demo keys are fixed and printed so a first curl works; set your own in production.
DEMO_API_KEY ?= demo-api-key
DEMO_ADMIN_KEY ?= demo-admin-key
run: install
	@echo "Scriptgate on http://127.0.0.1:5000  (X-API-Key: $(DEMO_API_KEY)  X-Admin-Key: $(DEMO_ADMIN_KEY))"
	@echo "try: curl -i -H 'X-API-Key: $(DEMO_API_KEY)' 'http://127.0.0.1:5000/api/hello.py?name=Rico'"
	API_KEY=$${API_KEY:-$(DEMO_API_KEY)} ADMIN_API_KEY=$${ADMIN_API_KEY:-$(DEMO_ADMIN_KEY)} \
	  $(VENV)/bin/scriptgate serve --bind 127.0.0.1:5000 --scripts scripts

# A self-signed certificate for a first try of the compose stack's HTTPS (Apache mounts
# $(TLS_DIR)); browsers and curl must be told to trust it (curl --cacert tls/server.crt).
# Replace both files with your CA's before serving anyone else.
TLS_DIR ?= tls
cert: $(TLS_DIR)/server.crt

$(TLS_DIR)/server.crt:
	mkdir -p $(TLS_DIR)
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
	  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
	  -keyout $(TLS_DIR)/server.key -out $(TLS_DIR)/server.crt 2>/dev/null
	chmod 600 $(TLS_DIR)/server.key

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# A few seconds, before every commit: lint and the unit tests only (no servers started).
check: lint
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

test: install debs lint
	$(PY) -m pytest -q -p no:cacheprovider
	$(MAKE) --no-print-directory bench-smoke

bench: install debs
	$(PY) bench/run.py

bench-smoke: install debs
	$(PY) bench/run.py --smoke

# Jobs: throughput of a no-op script and the added latency of the 202 path (printed).
bench-jobs: install debs
	$(PY) bench/jobs.py

soak: install
	$(PY) -m pytest -q -p no:cacheprovider tests/hardening/test_soak.py --soak-seconds 60

clean:
	rm -rf $(VENV) .cache logs data
