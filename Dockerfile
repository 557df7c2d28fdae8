# One genjobs replica. Build: `docker build -t genjobs .`
# Run against your NATS: `docker run --rm -e GENJOBS_NATS_URL=nats://nats:4222 genjobs`
# Without GENJOBS_NATS_URL it starts its own nats-server inside the container (data in /data),
# reachable only from inside it: fine for a quick look, not for several replicas.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Only what the package needs (no .venv, tests or bench in the image). nats.conf stays in the
# working directory: the embedded nats-server looks for ./nats.conf.
COPY pyproject.toml README.md nats.conf ./
COPY schemas ./schemas
COPY actors ./actors
COPY service ./service
RUN pip install . \
 && useradd --system --uid 10001 --no-create-home --home-dir /app genjobs \
 && mkdir /data && chown genjobs /data

USER genjobs
# SIGTERM = graceful stop: running jobs get their terminal event, acks are flushed, exit 0.
# It takes at most GENJOBS_SHUTDOWN_GRACE (10 s) plus a little: give it longer than that
# (`docker stop -t 20`, compose `stop_grace_period`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["genjobs"]
CMD ["serve", "--data-dir", "/data"]
