// A stock y-websocket client (WebsocketProvider, unchanged) driven by tests/test_yjs_node.py.
//
//   node yclient.mjs '<json spec>'
//
// spec: { url: "ws://127.0.0.1:PORT/yjs", doc, token, mode, ... }; it prints one JSON line with
// its result on stdout and exits 0, or prints {"error": ...} and exits 1. Modes:
//
//   text          inserts spec.inserts (strings) into text spec.text at seeded random places, each
//                 insert with its first character deleted in the same transaction, a few ms apart;
//                 then waits until the text is spec.expect characters long: {"text"}
//   read-record   waits for record spec.id of collection spec.collection: {"fields"} (tagged JSON)
//   write-record  puts record spec.id with spec.fields (tagged JSON), and spec.plain (raw Yjs values
//                 next to replica's: {record: {...}, field: {...}}); prints {"written": true} and
//                 stays connected until its stdin closes
//   refused       waits for the relay to close the connection: {"code", "reason", "denied"}
//
// Tagged JSON for what JSON cannot hold: {"$bigint": "123"}, {"$bytes": "00ff"}, {"$float": 2}.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { withYjs, Float } from '../../clients/js/replica-records.mjs'

const spec = JSON.parse(process.argv[2])
const replica = withYjs(Y)
const timeout = setTimeout(() => fail(`timed out in mode ${spec.mode}`), (spec.timeout ?? 20) * 1000)

function fail (message) {
  process.stdout.write(JSON.stringify({ error: message }) + '\n')
  process.exit(1)
}

function done (result) {
  clearTimeout(timeout)
  process.stdout.write(JSON.stringify(result) + '\n')
}

const untag = (value) => {
  if (Array.isArray(value)) return value.map(untag)
  if (value !== null && typeof value === 'object') {
    if ('$bigint' in value) return BigInt(value.$bigint)
    if ('$bytes' in value) return Uint8Array.from(Buffer.from(value.$bytes, 'hex'))
    if ('$float' in value) return new Float(value.$float)
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, untag(v)]))
  }
  return value
}

const tag = (value) => {
  if (typeof value === 'bigint') return { $bigint: value.toString() }
  if (value instanceof Uint8Array) return { $bytes: Buffer.from(value).toString('hex') }
  if (Array.isArray(value)) return value.map(tag)
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, tag(v)]))
  }
  return value
}

let seed = spec.seed ?? 1
const random = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648 }
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const ydoc = new Y.Doc()
const provider = new WebsocketProvider(spec.url, spec.doc, ydoc, {
  WebSocketPolyfill: WebSocket,
  params: spec.token == null ? {} : { token: spec.token },
  disableBc: true
})

const synced = new Promise((resolve) => {
  provider.on('sync', (isSynced) => { if (isSynced) resolve() })
})

async function text () {
  await synced
  const ytext = replica.text(ydoc, spec.text)
  for (const insert of spec.inserts) {
    const at = Math.floor(random() * (ytext.length + 1))
    ydoc.transact(() => {
      ytext.insert(at, insert)
      ytext.delete(at, 1)
    })
    await pause(Math.floor(random() * 5))
  }
  while (ytext.length !== spec.expect) await pause(10)
  done({ text: ytext.toString() })
  provider.destroy()
  process.exit(0)
}

async function readRecord () {
  await synced
  while (replica.getRecord(ydoc, spec.collection, spec.id) === null) await pause(10)
  done({ fields: tag(replica.getRecord(ydoc, spec.collection, spec.id)) })
  provider.destroy()
  process.exit(0)
}

async function writeRecord () {
  await synced
  replica.putRecord(ydoc, spec.collection, spec.id, untag(spec.fields))
  const plain = spec.plain ?? {}
  const collection = replica.records(ydoc, spec.collection)
  for (const [id, value] of Object.entries(plain.record ?? {})) collection.set(id, value)
  for (const [field, value] of Object.entries(plain.field ?? {})) collection.get(spec.id).set(field, value)
  done({ written: true })
  process.stdin.resume()
  process.stdin.on('end', () => { provider.destroy(); process.exit(0) })
}

function refused () {
  let denied = null
  const warn = console.warn
  console.warn = (message) => { denied = String(message); warn.call(console, message) }
  provider.on('connection-close', (event) => {
    if (event == null) return
    done({ code: event.code, reason: event.reason, denied })
    provider.destroy()
    process.exit(0)
  })
}

const modes = { text, 'read-record': readRecord, 'write-record': writeRecord, refused }
if (!(spec.mode in modes)) fail(`unknown mode ${spec.mode}`)
Promise.resolve(modes[spec.mode]()).catch((error) => fail(String(error?.stack ?? error)))
