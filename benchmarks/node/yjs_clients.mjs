// Stock Yjs clients (y-websocket's WebsocketProvider) measuring a y-protocols server, for
// benchmarks/yjs.py. All clients live in this one process, so that they share one clock.
//
//   node yjs_clients.mjs '{"serverUrl": "ws://127.0.0.1:PORT/yjs", "room": "bench/yjs",
//                          "params": {"token": "..."}, "writers": 2, "readers": 8,
//                          "burst": 5000, "paced": 300, "interval": 2}'
//
// Every update is one transaction setting one new key of the root map "m" (value: the sender's
// clock in ms). Two phases, after every client synced:
//   burst: each writer sends `burst` updates back to back; timed until every reader holds all
//          writers * burst keys: {"updates_per_s"} (updates made / seconds until fan-out complete)
//   paced: each writer sends `paced` updates, one every `interval` ms; each reader notes how long
//          each key took from its writer's transaction to its own observer:
//          {"latency_ms": {"p50", "p90", "p99", "max"}} over writers * paced * readers deliveries
// Prints one JSON line, or {"error"} and exits 1.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { performance } from 'node:perf_hooks'

const spec = JSON.parse(process.argv[2])
const timeout = setTimeout(() => fail('timed out'), (spec.timeout ?? 120) * 1000)
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function fail (message) {
  process.stdout.write(JSON.stringify({ error: message }) + '\n')
  process.exit(1)
}

function client () {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(spec.serverUrl, spec.room, doc, {
    WebSocketPolyfill: WebSocket,
    params: spec.params ?? {},
    disableBc: true
  })
  const synced = new Promise((resolve) => provider.on('sync', (ok) => { if (ok) resolve() }))
  provider.on('closed', (event) => fail(`closed by the server: ${event.code} ${event.reason}`))
  return { doc, provider, synced, map: doc.getMap('m') }
}

const writers = Array.from({ length: spec.writers }, client)
const readers = Array.from({ length: spec.readers }, client)
await Promise.all([...writers, ...readers].map((c) => c.synced))

// The keys each reader has seen, and the latencies of the paced phase.
let phase = 'burst'
const latencies = []
const seen = readers.map(() => 0)
readers.forEach((reader, index) => {
  reader.map.observe((event) => {
    const now = performance.now()
    for (const key of event.keysChanged) {
      if (!key.startsWith(phase)) continue
      seen[index] += 1
      if (phase === 'paced') latencies.push(now - reader.map.get(key))
    }
  })
})

async function until (count) {
  while (seen.some((n) => n < count)) await pause(1)
}

const started = performance.now()
writers.forEach((writer, w) => {
  for (let i = 0; i < spec.burst; i++) writer.map.set(`burst-${w}-${i}`, performance.now())
})
await until(spec.writers * spec.burst)
const seconds = (performance.now() - started) / 1000

phase = 'paced'
seen.fill(0)
for (let i = 0; i < spec.paced; i++) {
  writers.forEach((writer, w) => writer.map.set(`paced-${w}-${i}`, performance.now()))
  await pause(spec.interval)
}
await until(spec.writers * spec.paced)

latencies.sort((a, b) => a - b)
const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]
clearTimeout(timeout)
process.stdout.write(JSON.stringify({
  updates_per_s: (spec.writers * spec.burst) / seconds,
  burst_seconds: seconds,
  deliveries: latencies.length,
  latency_ms: { p50: at(0.5), p90: at(0.9), p99: at(0.99), max: latencies[latencies.length - 1] }
}) + '\n')
for (const c of [...writers, ...readers]) c.provider.destroy()
process.exit(0)
