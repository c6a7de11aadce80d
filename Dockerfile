# Scriptgate: drop Python files into /app/scripts and they are HTTP endpoints.
#   docker build -t scriptgate .
#   docker run -p 8000:8000 -e API_KEY=... -v "$PWD/scripts:/app/scripts:ro" scriptgate
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SCRIPTS_DIR=/app/scripts \
    LOG_FILE=/app/logs/framework.log

WORKDIR /app

RUN groupadd --system --gid 10001 scriptgate \
    && useradd --system --uid 10001 --gid scriptgate --home-dir /app \
       --shell /usr/sbin/nologin scriptgate

# The package first (the layer changes only with the code), then the example scripts.
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install --no-cache-dir . \
    && rm -rf build ./*.egg-info

# The packages the scripts import (scripts/requirements.txt), before the scripts: the
# layer is rebuilt only when that list changes. Scripts mounted at run time need their
# packages listed there too, and the image built again.
COPY scripts/requirements.txt ./scripts/requirements.txt
RUN pip install --no-cache-dir -r scripts/requirements.txt

# Root-owned: the server (and so any script) cannot rewrite the scripts it serves.
COPY scripts ./scripts
RUN mkdir -p /app/logs && chown scriptgate:scriptgate /app/logs

# Scripts are meant to be mounted (read-only is enough); the logs folder must stay
# writable by uid 10001, and is where a log shipper reads LOG_FILE.
VOLUME ["/app/scripts", "/app/logs"]

USER 10001:10001
EXPOSE 8000

# No curl in the slim image: Python's urllib asks the platform's own health endpoint.
# (If API_TRUSTED_IPS is set, it must admit 127.0.0.1.)
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/_platform/health', timeout=4).status != 200)"]

CMD ["scriptgate", "serve", "--bind", "0.0.0.0:8000"]
