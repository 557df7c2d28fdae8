// Load generator of the Durable Streams bench section (bench/streams.py): the same client
// against every server, speaking the protocol over plain node:http with keep-alive sockets.
//
//   node bench/ds_load.mjs <mode> <params.json>      -> one JSON line on stdout (the result)
//
// Modes (every one bounded in count and time, loopback only):
//   append   W writers, each on a stream of its own, POST one message per request, back to back,
//            for `duration` seconds: appends/s and per-append latency.
//   fill     one writer POSTs `count` messages into one stream, one per request (as a token
//            stream is written), so every server stores them as `count` separate appends.
//   catchup  reads a filled stream from offset -1 following Stream-Next-Offset until
//            Stream-Up-To-Date, `reads` times: ms per full read, messages counted every time.
//   sse      R readers over S streams (`?offset=now&live=sse`); prints {"ready":true} once every
//            reader holds its first control event, then records the latency of each message
//            (receive time - the writer's CLOCK_MONOTONIC stamp inside it) until each reader
//            has `expect` messages or `deadline` seconds passed.
//   pace     the writer of the sse run: every stream gets `rate` appends/s for `duration` s.
//
// Latency needs no side channel: payloads carry process.hrtime (CLOCK_MONOTONIC, system-wide
// on Linux), so readers in another process compute it from the bytes they receive.

import http from 'node:http'
import { readFileSync } from 'node:fs'

const [mode, paramsPath] = process.argv.slice(2)
const P = JSON.parse(readFileSync(paramsPath, 'utf8'))
const base = new URL(P.base)
const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity })

const nowNs = () => process.hrtime.bigint()
const ms = (ns) => Number(ns) / 1e6

function request(method, path, { headers = {}, body = null } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: base.hostname, port: base.port, method, path, agent, headers },
      (res) => {
        const chunks = []
        res.on('data', (c) => chunks.push(c))
        res.on('end', () =>
          resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }))
        res.on('error', reject)
      })
    req.on('error', reject)
    if (body !== null) req.end(body)
    else req.end()
  })
}

const streamPath = (name) => `${base.pathname.replace(/\/$/, '')}/v1/stream/${name}`
const CT = P.content_type || 'application/json'

async function create(name) {
  const r = await request('PUT', streamPath(name), { headers: { 'content-type': CT } })
  if (r.status !== 201 && r.status !== 200) throw new Error(`PUT ${name}: ${r.status} ${r.body}`)
}

// A JSON message of exactly `size` bytes: {"t":"<ns>","p":"xxx..."}.
function message(size, stamp = nowNs()) {
  const head = `{"t":"${stamp}","p":"`
  const pad = Math.max(0, size - head.length - 2)
  return Buffer.from(head + 'x'.repeat(pad) + '"}')
}

async function append(name, body) {
  const r = await request('POST', streamPath(name), {
    headers: { 'content-type': CT, 'content-length': body.length },
    body,
  })
  if (r.status !== 204 && r.status !== 200) throw new Error(`POST ${name}: ${r.status} ${r.body}`)
}

function pct(xs, q) {
  if (!xs.length) return null
  const s = Float64Array.from(xs).sort()
  return s[Math.min(s.length, Math.max(1, Math.ceil((q / 100) * s.length))) - 1]
}

async function runAppend() {
  const names = Array.from({ length: P.writers }, (_, i) => `${P.tag}-w${i}`)
  await Promise.all(names.map(create))
  const lat = []
  let appends = 0
  const t0 = nowNs()
  const end = t0 + BigInt(Math.round(P.duration * 1e9))
  await Promise.all(names.map(async (name) => {
    while (nowNs() < end) {
      const s = nowNs()
      await append(name, message(P.size, s))
      lat.push(ms(nowNs() - s))
      appends++
    }
  }))
  const secs = ms(nowNs() - t0) / 1000
  return {
    appends, seconds: secs, rate: appends / secs, bytes_per_s: (appends * P.size) / secs,
    p50_ms: pct(lat, 50), p99_ms: pct(lat, 99), writers: P.writers, size: P.size,
  }
}

async function runFill() {
  await create(P.stream)
  const t0 = nowNs()
  for (let i = 0; i < P.count; i++) await append(P.stream, message(P.size))
  return { count: P.count, seconds: ms(nowNs() - t0) / 1000 }
}

async function readAll(name) {
  let offset = '-1'
  let messages = 0
  let bytes = 0
  let requests = 0
  for (;;) {
    const r = await request('GET', `${streamPath(name)}?offset=${encodeURIComponent(offset)}`)
    requests++
    if (r.status !== 200) throw new Error(`GET ${name} at ${offset}: ${r.status} ${r.body}`)
    bytes += r.body.length
    messages += JSON.parse(r.body.toString('utf8')).length
    const next = r.headers['stream-next-offset']
    if (!next) throw new Error('no Stream-Next-Offset')
    if (r.headers['stream-up-to-date'] === 'true') return { messages, bytes, requests }
    if (next === offset) throw new Error(`offset did not advance from ${offset}`)
    offset = next
  }
}

async function runCatchup() {
  const times = []
  let last = null
  for (let i = 0; i < P.reads; i++) {
    const t = nowNs()
    last = await readAll(P.stream)
    times.push(ms(nowNs() - t))
    if (last.messages !== P.expect) {
      throw new Error(`read ${last.messages} messages, expected ${P.expect}`)
    }
  }
  return { ms: times, ...last }
}

// --- SSE readers -------------------------------------------------------------------------------

function sseReader(name, onControl, onData, onEnd) {
  const req = http.request({
    host: base.hostname, port: base.port, method: 'GET', agent: false,
    path: `${streamPath(name)}?offset=now&live=sse`,
    headers: { accept: 'text/event-stream' },
  }, (res) => {
    if (res.statusCode !== 200) {
      onEnd(new Error(`SSE ${name}: ${res.statusCode}`))
      res.resume()
      return
    }
    res.setEncoding('utf8')
    let buf = ''
    let event = ''
    let data = []
    res.on('data', (chunk) => {
      const now = nowNs()
      buf += chunk
      let i
      while ((i = buf.indexOf('\n')) >= 0) {
        let line = buf.slice(0, i)
        buf = buf.slice(i + 1)
        if (line.endsWith('\r')) line = line.slice(0, -1)
        if (line === '') {
          if (event === 'data') onData(data.join('\n'), now)
          else if (event === 'control') onControl(data.join('\n'))
          event = ''
          data = []
        } else if (line.startsWith('event:')) event = line.slice(6).trim()
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''))
      }
    })
    res.on('end', () => onEnd(null))
    res.on('error', onEnd)
  })
  req.on('error', onEnd)
  req.end()
  return req
}

const STAMP = /"t":"(\d+)"/g

async function runSse() {
  const names = Array.from({ length: P.streams }, (_, i) => `${P.tag}-s${i}`)
  await Promise.all(names.map(create))
  const lat = []
  const emitted = []
  let readyCount = 0
  let doneCount = 0
  let errors = []
  let resolveReady
  let resolveDone
  const ready = new Promise((r) => { resolveReady = r })
  const done = new Promise((r) => { resolveDone = r })
  const reqs = []
  for (let i = 0; i < P.readers; i++) {
    const name = names[i % names.length]
    let got = 0
    let isReady = false
    let finished = false
    const finish = () => {
      if (finished) return
      finished = true
      if (++doneCount === P.readers) resolveDone()
    }
    reqs.push(sseReader(name,
      () => {
        if (!isReady) {
          isReady = true
          if (++readyCount === P.readers) resolveReady()
        }
      },
      (text, now) => {
        for (const m of text.matchAll(STAMP)) {
          const t = BigInt(m[1])
          lat.push(ms(now - t))
          emitted.push(Number(t))
          got++
        }
        if (got >= P.expect) finish()
      },
      (err) => {
        if (err) errors.push(String(err))
        finish()
      }))
    // Open connections in small bursts: 1,000 at once would measure the accept queue.
    if (i % 50 === 49) await new Promise((r) => setTimeout(r, 5))
  }
  const readyTimer = setTimeout(() => resolveReady(), P.ready_timeout * 1000)
  await ready
  clearTimeout(readyTimer)
  if (readyCount !== P.readers) {
    throw new Error(`only ${readyCount}/${P.readers} SSE readers connected; ${errors.slice(0, 3)}`)
  }
  process.stdout.write(JSON.stringify({ ready: true, streams: names }) + '\n')
  const deadline = setTimeout(() => resolveDone(), P.deadline * 1000)
  await done
  clearTimeout(deadline)
  for (const r of reqs) r.destroy()
  // Spread: the run cut in three by emit time.
  const order = emitted.map((t, i) => [t, lat[i]]).sort((a, b) => a[0] - b[0])
  const third = Math.ceil(order.length / 3)
  const blocks = [0, 1, 2].map((k) => order.slice(k * third, (k + 1) * third).map((x) => x[1]))
  return {
    readers: P.readers, streams: P.streams, deliveries: lat.length,
    expected_deliveries: P.readers * P.expect,
    p50_ms_all: pct(lat, 50), p99_ms_all: pct(lat, 99),
    p50_ms: blocks.map((b) => pct(b, 50)), p99_ms: blocks.map((b) => pct(b, 99)),
    errors: errors.slice(0, 5),
  }
}

async function runPace() {
  const names = P.streams_names
  const interval = 1000 / P.rate
  const count = Math.round(P.rate * P.duration)
  let appends = 0
  let late = 0
  const t0 = performance.now()
  await Promise.all(names.map(async (name, k) => {
    const offset = (interval * k) / names.length // spread the streams over one interval
    for (let i = 0; i < count; i++) {
      const due = t0 + offset + i * interval
      const wait = due - performance.now()
      if (wait > 0) await new Promise((r) => setTimeout(r, wait))
      else late++
      await append(name, message(P.size))
      appends++
    }
  }))
  const secs = (performance.now() - t0) / 1000
  return { appends, seconds: secs, rate: appends / secs, late }
}

const MODES = { append: runAppend, fill: runFill, catchup: runCatchup, sse: runSse, pace: runPace }

try {
  const result = await MODES[mode]()
  process.stdout.write(JSON.stringify(result) + '\n')
  agent.destroy()
  process.exit(0)
} catch (e) {
  process.stdout.write(JSON.stringify({ error: String(e && e.stack || e) }) + '\n')
  process.exit(1)
}
