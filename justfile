# Every developer command. `just --list` shows them.
set shell := ["bash", "-euo", "pipefail", "-c"]

py := env_var_or_default("PYTHON", "python")

# The demo: embedded NATS, two replicas, a producer, a reader that drops off and resumes, an abort.
run:
    {{py}} -m service.cli demo

# One replica (embedded nats-server unless GENJOBS_NATS_URL is set).
serve *ARGS:
    {{py}} -m service.cli serve {{ARGS}}

# The embedded nats-server alone, with nats.conf, on 127.0.0.1:4222 (monitoring on :8222).
nats DATA=".genjobs-data":
    mkdir -p {{DATA}}
    nats-server -c nats.conf -sd {{DATA}} -m 8222

# The test suite (real nats-server, asyncio and uvloop).
test *ARGS:
    {{py}} -m pytest {{ARGS}}

# Format check, lint, strict types, then the tests.
check:
    ruff format --check service actors schemas tests bench
    ruff check service actors schemas tests bench
    mypy --strict service actors schemas
    {{py}} -m pytest

# Benchmarks: genjobs beside raw nats-py and a LibreChat-style Redis store.
bench *ARGS:
    {{py}} -m bench.run {{ARGS}}

# Tiny benchmark run: checks every figure is produced (also part of `just test`).
bench-smoke:
    {{py}} -m bench.run --smoke

# The baselines: redis-server (Debian package) and redis-py, rakaia-streams and uvicorn (the
# `bench` extra), and the Node reference server (`npm ci` from package-lock.json).
bench-deps:
    command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
    {{py}} -m pip install -q -e '.[bench]'
    npm ci --no-audit --no-fund

# Long fault-injection variants (kill -9, restarts, cluster failover; the short ones run in
# `just test`). Figures go to the terminal and, as JSON lines, to $GENJOBS_FAULTS_REPORT if set.
chaos *ARGS:
    {{py}} -m pytest -m slow tests/faults {{ARGS}}

# The Durable Streams conformance suite (332 tests, pinned in package-lock.json) against genjobs
# on a real nats-server; `npm ci` first if node_modules is missing or stale. `-t PATTERN` filters.
conformance *ARGS:
    {{py}} conformance/run.py {{ARGS}}
