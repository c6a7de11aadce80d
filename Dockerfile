# Scriptgate: drop Python files into /app/scripts and they are HTTP endpoints.
#   docker build -t scriptgate .
#   docker run -p 8000:8000 -e API_KEY=... -v "$PWD/scripts:/app/scripts:ro" scriptgate
# Port 8000 serves the scripts (and /_platform/*); port 8001 serves /_platform/* only.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SCRIPTS_DIR=/app/scripts \
    LOG_FILE=/app/logs/framework.log \
    PLATFORM_BIND=0.0.0.0:8001 \
    JOB_DATA_DIR=/app/data \
    RUNNER_USER=scriptgate-runner

WORKDIR /app

# scriptgate (10001) owns the platform's files; scripts run as scriptgate-runner (10002),
# which can read the scripts and nothing of the platform's.
RUN groupadd --system --gid 10001 scriptgate \
    && useradd --system --uid 10001 --gid scriptgate --home-dir /app \
       --shell /usr/sbin/nologin scriptgate \
    && groupadd --system --gid 10002 scriptgate-runner \
    && useradd --system --uid 10002 --gid scriptgate-runner --home-dir /nonexistent \
       --shell /usr/sbin/nologin scriptgate-runner

# The package first (the layer changes only with the code), then the example scripts.
COPY pyproject.toml README.md ./
COPY service ./service
COPY scriptgate ./scriptgate
RUN pip install --no-cache-dir . \
    && rm -rf build ./*.egg-info

# The packages the scripts import (scripts/requirements.txt), before the scripts: the
# layer is rebuilt only when that list changes. Scripts mounted at run time need their
# packages listed there too, and the image built again.
COPY scripts/requirements.txt ./scripts/requirements.txt
RUN pip install --no-cache-dir -r scripts/requirements.txt

# Root-owned: the server (and so any script) cannot rewrite the scripts it serves.
COPY scripts ./scripts
RUN mkdir -p /app/logs /app/data && chown scriptgate:scriptgate /app/logs /app/data \
    && chmod 0750 /app/logs /app/data

# Scripts are meant to be mounted (read-only is enough, readable by scriptgate-runner);
# the logs folder is where a log shipper reads LOG_FILE. /app/data holds the embedded job
# queue (SQLite) when no JOB_BROKER_URL is set. Neither is readable by scripts.
VOLUME ["/app/scripts", "/app/logs", "/app/data"]

# Root, so that runners can switch to RUNNER_USER: the platform's keys and files stay out
# of every script's reach (README: Runner processes). Run it as 10001 instead (Kubernetes'
# runAsNonRoot does) and runners run as 10001 too: scripts are still separate processes
# without the platform's keys, but could open files uid 10001 can read.
# hadolint ignore=DL3002
USER 0
# 8000: the scripts, for clients (publish this one, or put Apache in front).
# 8001: the platform plane (PLATFORM_BIND): /_platform/health, routes and metrics from a
# process that runs no script, so the health check and Prometheus are answered even while
# slow scripts hold every worker thread. For the health check and the scraper only.
EXPOSE 8000 8001

# No curl in the slim image: Python's urllib asks the plane's health endpoint. (If
# API_TRUSTED_IPS is set, it must admit 127.0.0.1; with PLATFORM_BIND=off, give the
# container a health check on port 8000 instead.)
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8001/_platform/health', timeout=4).status != 200)"]

CMD ["scriptgate", "serve", "--bind", "0.0.0.0:8000"]
