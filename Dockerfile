# munsit-bridge: polls Munsit and delivers signed webhooks.
#   docker build -t munsit-bridge .
#   docker run -d --name munsit-bridge -p 8080:8080 \
#     -e MUNSIT_API_KEY=... -e BRIDGE_ADMIN__TOKEN=... \
#     -v "$PWD/bridge.toml:/config/bridge.toml:ro" -v munsit-bridge-data:/data munsit-bridge
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# the same steps as `make`: a virtualenv, pip upgraded, the package installed from the repo
COPY pyproject.toml README.md /src/
COPY bridge /src/bridge
RUN python -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install --quiet --upgrade pip \
    && /opt/venv/bin/python -m pip install --quiet /src \
    && rm -rf /src

RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin bridge \
    && mkdir -p /config /data \
    && chown bridge:bridge /data

ENV PATH=/opt/venv/bin:$PATH \
    BRIDGE_CONFIG=/config/bridge.toml \
    BRIDGE_STORE__URL=sqlite:////data/bridge.db \
    BRIDGE_ADMIN__HOST=0.0.0.0 \
    BRIDGE_ADMIN__PORT=8080 \
    BRIDGE_LOG__FORMAT=json

USER bridge
WORKDIR /data
VOLUME ["/config", "/data"]
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('BRIDGE_ADMIN__PORT', '8080'), timeout=4)"]

STOPSIGNAL SIGTERM
CMD ["munsit-bridge", "run"]
