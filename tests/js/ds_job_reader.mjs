// Reads one Durable Stream with the official TypeScript client (@durable-streams/client, from
// the repo's package.json), dropping off and resuming, for tests/test_ds_clients.py:
//
//   node tests/js/ds_job_reader.mjs <stream-url> <live: sse|long-poll> <drop-every> <timeout-s>
//
// It opens a session from offset -1, and after every batch that brings its item count to
// another multiple of <drop-every> it cancels the session (the reader drops off) and opens a
// new one from the offset the client reported for that batch (it resumes), until a batch says
// the stream is closed. Every item is printed as one JSON line {"item": ..., "offset": ...,
// "session": n}; the last line is {"done": true, "sessions": n, "items": count}. Any error
// prints {"error": ...} and exits 1; the whole run is bounded by <timeout-s>.
import { stream } from '@durable-streams/client'

const [url, live, dropEveryArg, timeoutArg] = process.argv.slice(2)
const dropEvery = Number(dropEveryArg)
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

const deadline = setTimeout(() => {
  out({ error: `timed out after ${timeoutArg}s` })
  process.exit(1)
}, Number(timeoutArg) * 1000)

async function session(offset, n, count) {
  // One session: resolves with {offset, count, closed} when it drops off or the stream ends.
  const res = await stream({ url, offset, live, json: true, warnOnHttp: false })
  return await new Promise((resolve, reject) => {
    let settled = false
    const finish = (value) => {
      if (settled) return
      settled = true
      res.cancel()
      resolve(value)
    }
    res.subscribeJson((batch) => {
      if (settled) return
      for (const item of batch.items) out({ item, offset: batch.offset, session: n })
      const before = count
      count += batch.items.length
      if (batch.streamClosed) finish({ offset: batch.offset, count, closed: true })
      else if (Math.floor(count / dropEvery) > Math.floor(before / dropEvery)) {
        finish({ offset: batch.offset, count, closed: false })
      }
    })
    // `closed` can resolve before the subscriber got the last batch (the client marks a
    // session closed as soon as it has enqueued a final response), so only its failure is
    // used here: the end of the stream is the batch that says so.
    res.closed.catch((err) => {
      if (!settled) {
        settled = true
        reject(err)
      }
    })
  })
}

try {
  let offset = '-1'
  let count = 0
  let n = 0
  for (;;) {
    n++
    const r = await session(offset, n, count)
    offset = r.offset
    count = r.count
    if (r.closed) break
  }
  clearTimeout(deadline)
  out({ done: true, sessions: n, items: count })
  process.exit(0)
} catch (e) {
  out({ error: String((e && e.stack) || e) })
  process.exit(1)
}
