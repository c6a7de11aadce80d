# Every target is idempotent: a second run only checks what is already there.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEB_STAMP := .cache/debs.installed
DEBS := apache2 prometheus prometheus-alertmanager wrk redis-server chromium valgrind python3-venv

.PHONY: run test check lint fmt install debs bench bench-smoke bench-jobs bench-schedules bench-instructions bench-isolation bench-console soak clean cert

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests drive for real (Apache, Prometheus/promtool, wrk, Redis, and
# Chromium for the docs page, driven by Playwright with this binary: no browser download),
# and valgrind, whose callgrind counts the benchmark's instructions per request.
debs:
	@missing=""; for p in $(DEBS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# `make run` serves from an environment of its own: Scriptgate and scripts/requirements.txt,
# exactly what the Docker image installs (not .venv's test tools), so a script that works
# here works in the image.
RUN_VENV ?= .venv-run
RUN_STAMP := $(RUN_VENV)/.installed
$(RUN_STAMP): pyproject.toml scripts/requirements.txt
	test -x $(RUN_VENV)/bin/python || python3 -m venv $(RUN_VENV)
	$(RUN_VENV)/bin/python -m pip install -q --disable-pip-version-check -e . -r scripts/requirements.txt
	touch $(RUN_STAMP)

# A key you did not set is a demo key, printed so a first curl works; one you set is
# printed as yours; one set empty closes its zone (serve warns). Set your own in production.
DEMO_API_KEY ?= demo-api-key
DEMO_ADMIN_KEY ?= demo-admin-key
PORT ?= 5000
run: $(RUN_STAMP)
	@api="$${API_KEY-$(DEMO_API_KEY)}"; admin="$${ADMIN_API_KEY-$(DEMO_ADMIN_KEY)}"; \
	note() { if [ "$$1" = set ]; then echo "yours, from $$2"; else echo "demo key; set $$2 to use your own"; fi; }; \
	echo "Keys in use:"; \
	if [ -n "$$api" ]; then echo "  X-API-Key: $${api%%,*}   ($$(note "$${API_KEY+set}" API_KEY))"; fi; \
	if [ -n "$$admin" ]; then echo "  X-Admin-Key: $${admin%%,*}   ($$(note "$${ADMIN_API_KEY+set}" ADMIN_API_KEY))"; fi; \
	if [ -n "$$api" ]; then echo "Try: curl -i -H 'X-API-Key: $${api%%,*}' 'http://127.0.0.1:$(PORT)/api/hello.py?name=Rico'"; fi; \
	echo "Docs: http://127.0.0.1:$(PORT)/_platform/docs"; \
	API_KEY="$$api" ADMIN_API_KEY="$$admin" exec $(RUN_VENV)/bin/scriptgate serve --bind 127.0.0.1:$(PORT) --scripts scripts

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

# Instructions per request (valgrind's callgrind) and in-process req/s of every contender;
# `make bench` runs it too.
bench-instructions: install debs
	$(PY) bench/instructions.py

# What isolation costs: runner processes against the threads of commit ba5cfd7 (in process,
# callgrind, wrk, memory of 24 waiting scripts, cold calls); `make bench` runs it too.
bench-isolation: install debs
	$(PY) bench/isolation.py

# Jobs: throughput of a no-op script and the added latency of the 202 path (printed).
bench-jobs: install debs
	$(PY) bench/jobs.py
	$(PY) bench/jobs.py --live

# Schedules (bench/schedules.py): start accuracy, and 1,000 schedules due at once.
bench-schedules: install debs
	$(PY) bench/schedules.py

# The console with 500 scripts in headless Chromium: render time, bytes sent, axe-core.
bench-console: install debs
	$(PY) bench/console.py

soak: install
	$(PY) -m pytest -q -p no:cacheprovider tests/hardening/test_soak.py --soak-seconds 60

clean:
	rm -rf $(VENV) $(RUN_VENV) .cache logs data
