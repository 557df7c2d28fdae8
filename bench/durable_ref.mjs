// The Durable Streams reference server (@durable-streams/server, in memory) for `just bench`:
// the comparison for genjobs' SSE gateway. Prints "READY <url>" once it listens; stops when
// its stdin closes (the bench exited, however it exited) or on SIGTERM.
import { DurableStreamTestServer } from "@durable-streams/server";

const server = new DurableStreamTestServer({ host: "127.0.0.1", port: 0 });
const url = await server.start();
process.stdout.write(`READY ${url}\n`);

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  await server.stop();
  process.exit(0);
}
process.stdin.on("end", stop);
process.stdin.on("error", stop);
process.stdin.resume();
process.on("SIGTERM", stop);
