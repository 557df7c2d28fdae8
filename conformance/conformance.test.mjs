// The Durable Streams conformance suite against CONFORMANCE_TEST_URL (see conformance/run.py).
import { runConformanceTests } from "@durable-streams/server-conformance-tests"
const baseUrl = process.env.CONFORMANCE_TEST_URL
runConformanceTests({ baseUrl, longPollTimeoutMs: Number(process.env.CONFORMANCE_LONG_POLL_MS ?? 2000) })
