// The Durable Streams reference server (@durable-streams/server, from the repo's package.json)
// for the bench: `node bench/ds_ref_server.mjs [DATA_DIR]` serves in memory, or with DATA_DIR
// its file store (LMDB metadata + append-only logs, fdatasync on every append). Prints
// "READY <url>" once it listens on 127.0.0.1 (a port it picks); stops on SIGTERM.
//
// The file store keeps at most `maxFileHandles` (default 100) append handles open; with more
// streams written at once, an evicted handle makes the append's fdatasync fail and the server
// answers 404 "Stream not found" (0.3.7, FileHandlePool.fsyncFile). DurableStreamTestServer
// does not pass the option through, so the store is swapped for one with room for every
// stream the bench writes: the peer runs in the configuration it works in.
import { DurableStreamTestServer, FileBackedStreamStore } from '@durable-streams/server'

const dataDir = process.argv[2]
const server = new DurableStreamTestServer({ port: 0, host: '127.0.0.1', longPollTimeout: 2000 })
if (dataDir) {
  server.store = new FileBackedStreamStore({ dataDir, maxFileHandles: 8192 })
  server.options.dataDir = dataDir
}
const url = await server.start()
process.stdout.write(`READY ${url}\n`)
const stop = async () => {
  await server.stop()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
