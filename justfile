# Every developer command. `just --list` shows them.
set shell := ["bash", "-euo", "pipefail", "-c"]

py := env_var_or_default("PYTHON", "python")

# The demo: embedded NATS, two replicas, a producer, a reader that drops off and resumes, an abort.
run:
    {{py}} -m service.cli demo

# The demo with a browser view: prints the URL of a page that streams a generation live (seq
# numbers, reconnects, a stop button); stays up until Ctrl-C.
run-http ADDR="127.0.0.1:8080":
    {{py}} -m service.cli demo --http {{ADDR}}

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

# `just bench` on two git revisions back to back, each in a temporary worktree, alternating
# runs (--rounds N), then a before/after table (bench/compare.py). Run it on an idle machine.
bench-compare BEFORE AFTER *ARGS:
    {{py}} -m bench.compare {{BEFORE}} {{AFTER}} {{ARGS}}

# Tiny benchmark run: checks every figure is produced (also part of `just test`).
bench-smoke:
    {{py}} -m bench.run --smoke

# The baselines: redis-server (Debian package) and redis-py, rakaia-streams and uvicorn (the
# `bench` extra), and the Node reference server (`npm ci` from package-lock.json).
bench-deps:
    command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
    {{py}} -m pip install -q -e '.[bench]'
    npm ci --no-audit --no-fund

# Debian's chromium for the browser tests (tests/http/test_browser.py drives it with Playwright's
# Python API at /usr/bin/chromium; Playwright's own browser download is never used).
browser-deps:
    command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# The architecture's shape: upward imports, import cycles, modules and functions over the
# size limits (tests/test_layers.py fails on them).
structure:
    {{py}} -m tests.structure

# Long fault-injection variants (kill -9, restarts, cluster failover; the short ones run in
# `just test`). Figures go to the terminal and, as JSON lines, to $GENJOBS_FAULTS_REPORT if set.
chaos *ARGS:
    {{py}} -m pytest -m slow tests/faults {{ARGS}}

# The HTTP gateway (a plain NATS client; needs GENJOBS_JWT_SECRET, or GENJOBS_AUTH=none for dev).
gateway *ARGS:
    {{py}} -m service.cli gateway {{ARGS}}

# Which HTTP stack holds idle SSE connections cheaper: aiohttp vs Starlette on uvicorn (bench extra).
bench-stack *ARGS:
    {{py}} -m bench.sse_stack {{ARGS}}

# The Durable Streams conformance suite (332 tests, pinned in package-lock.json) against genjobs
# on a real nats-server; `npm ci` first if node_modules is missing or stale. `-t PATTERN` filters.
[positional-arguments]
conformance *ARGS:
    {{py}} conformance/run.py "$@"

# The containers, built and run here (docs/deploy.md): installs docker.io, docker-compose and
# debootstrap with apt if missing, starts dockerd if none runs (and stops it after), builds the
# base and project images, runs compose.yaml, restarts each replica, kills a NATS node,
# restarts the gateway while remote producers stream and SSE and NATS readers follow, checks
# nothing was lost, duplicated or interrupted, tears down, prints figures. Needs root.
containers *ARGS:
    {{py}} -m tests.containers.run {{ARGS}}
