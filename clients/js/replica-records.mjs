// Reading and writing replica's documents from a Yjs client (y-websocket, TipTap, ...).
//
// replica keeps each document's parts under prefixed root names (docs/yjs.md):
//
//   doc.text("notes")            in Python  is  ydoc.getText("text:notes")       in JS
//   doc.records("households")    in Python  is  ydoc.getMap("records:households") in JS
//
// A record collection is a Y.Map of record id -> Y.Map of field -> Uint8Array: each field
// value is encoded with msgpack by replica.values so that ints stay ints (pycrdt turns ints
// into floats). This module is that codec in plain JS (no dependency) and the record calls:
//
//   import * as Y from 'yjs'
//   import { withYjs } from './replica-records.mjs'
//   const replica = withYjs(Y)
//   replica.putRecord(ydoc, 'households', 'h1', { members: 4, head: 'Awa' })
//   replica.getRecord(ydoc, 'households', 'h1')   // { head: 'Awa', members: 4 }
//
// Values: null, booleans, numbers, BigInt, strings, Uint8Array, arrays and plain objects of
// these. Integers read as Number when they are safe integers (|n| <= 2**53 - 1), else as
// BigInt; a Number is written as an int when Number.isInteger, else as a float64, so write
// `new Float(2)` to keep a float whose value is integral a float for Python.

/** A number to be stored as a float even when its value is integral. */
export class Float {
  constructor (value) { this.value = Number(value) }
}

const BIG_INT = 1 // replica.values' msgpack extension code for ints beyond 64 bits
const MAX_DEPTH = 64

/** The root name of replica's `doc.text(name)`. */
export const textRoot = (name) => 'text:' + name
/** The root name of replica's `doc.records(collection)`. */
export const recordsRoot = (collection) => 'records:' + collection

// -- the value codec (msgpack, as replica.values writes it) ----------------------------

class Writer {
  constructor () { this.parts = []; this.size = 0 }
  bytes (array) { this.parts.push(array); this.size += array.length }
  byte (...values) { this.bytes(Uint8Array.from(values)) }
  view (length, fill) {
    const array = new Uint8Array(length)
    fill(new DataView(array.buffer))
    this.bytes(array)
  }
  done () {
    const out = new Uint8Array(this.size)
    let at = 0
    for (const part of this.parts) { out.set(part, at); at += part.length }
    return out
  }
}

const MIN_I64 = -(2n ** 63n)
const MAX_U64 = 2n ** 64n - 1n

function writeInt (w, n) {
  if (n >= 0n) {
    if (n < 128n) w.byte(Number(n))
    else if (n < 256n) w.byte(0xcc, Number(n))
    else if (n < 65536n) w.view(3, (v) => { v.setUint8(0, 0xcd); v.setUint16(1, Number(n)) })
    else if (n < 2n ** 32n) w.view(5, (v) => { v.setUint8(0, 0xce); v.setUint32(1, Number(n)) })
    else if (n <= MAX_U64) w.view(9, (v) => { v.setUint8(0, 0xcf); v.setBigUint64(1, n) })
    else writeBigInt(w, n)
  } else {
    if (n >= -32n) w.byte(Number(n) & 0xff)
    else if (n >= -128n) w.view(2, (v) => { v.setUint8(0, 0xd0); v.setInt8(1, Number(n)) })
    else if (n >= -32768n) w.view(3, (v) => { v.setUint8(0, 0xd1); v.setInt16(1, Number(n)) })
    else if (n >= -(2n ** 31n)) w.view(5, (v) => { v.setUint8(0, 0xd2); v.setInt32(1, Number(n)) })
    else if (n >= MIN_I64) w.view(9, (v) => { v.setUint8(0, 0xd3); v.setBigInt64(1, n) })
    else writeBigInt(w, n)
  }
}

function writeBigInt (w, n) {
  // Two's complement, big-endian, in (bit_length + 8) // 8 bytes, as Python's int.to_bytes.
  const bits = (n < 0n ? -n : n).toString(2).length
  const length = Math.floor((bits + 8) / 8)
  let value = n < 0n ? (1n << BigInt(8 * length)) + n : n
  const data = new Uint8Array(length)
  for (let i = length - 1; i >= 0; i--) { data[i] = Number(value & 0xffn); value >>= 8n }
  writeExt(w, BIG_INT, data)
}

function writeExt (w, code, data) {
  const fixed = { 1: 0xd4, 2: 0xd5, 4: 0xd6, 8: 0xd7, 16: 0xd8 }[data.length]
  if (fixed !== undefined) w.byte(fixed, code)
  else if (data.length < 256) w.byte(0xc7, data.length, code)
  else if (data.length < 65536) w.view(4, (v) => { v.setUint8(0, 0xc8); v.setUint16(1, data.length); v.setUint8(3, code) })
  else w.view(6, (v) => { v.setUint8(0, 0xc9); v.setUint32(1, data.length); v.setUint8(5, code) })
  w.bytes(data)
}

function writeLength (w, length, fix, fixMax, codes) {
  if (fix !== null && length <= fixMax) w.byte(fix | length)
  else if (codes[0] !== null && length < 256) w.byte(codes[0], length)
  else if (length < 65536) w.view(3, (v) => { v.setUint8(0, codes[1]); v.setUint16(1, length) })
  else w.view(5, (v) => { v.setUint8(0, codes[2]); v.setUint32(1, length) })
}

function writeValue (w, value, depth) {
  if (value === null) return w.byte(0xc0)
  if (value === true || value === false) return w.byte(value ? 0xc3 : 0xc2)
  if (value instanceof Float) return w.view(9, (v) => { v.setUint8(0, 0xcb); v.setFloat64(1, value.value) })
  if (typeof value === 'number') {
    if (Number.isSafeInteger(value)) return writeInt(w, BigInt(value))
    return w.view(9, (v) => { v.setUint8(0, 0xcb); v.setFloat64(1, value) })
  }
  if (typeof value === 'bigint') return writeInt(w, value)
  if (typeof value === 'string') {
    const data = new TextEncoder().encode(value)
    writeLength(w, data.length, 0xa0, 31, [0xd9, 0xda, 0xdb])
    return w.bytes(data)
  }
  if (value instanceof Uint8Array) {
    writeLength(w, value.length, null, -1, [0xc4, 0xc5, 0xc6])
    return w.bytes(value)
  }
  if (depth >= MAX_DEPTH) throw new TypeError(`record values may nest at most ${MAX_DEPTH} levels deep`)
  if (Array.isArray(value)) {
    writeLength(w, value.length, 0x90, 15, [null, 0xdc, 0xdd])
    for (const item of value) writeValue(w, item, depth + 1)
    return
  }
  if (typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    const entries = Object.entries(value)
    writeLength(w, entries.length, 0x80, 15, [null, 0xde, 0xdf])
    for (const [key, item] of entries) { writeValue(w, key, depth + 1); writeValue(w, item, depth + 1) }
    return
  }
  throw new TypeError(`unsupported record value: ${String(value).slice(0, 80)}; use null, booleans, ` +
    'numbers, BigInt, strings, Uint8Array, or arrays/plain objects of these')
}

/** The bytes replica stores for one field value. */
export function encodeValue (value) {
  const w = new Writer()
  writeValue(w, value, 0)
  return w.done()
}

/** One field value from the bytes replica stores; throws on anything else. */
export function decodeValue (data) {
  if (!(data instanceof Uint8Array)) throw new TypeError('not an encoded record value (not bytes)')
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength)
  let at = 0
  const need = (n) => { if (at + n > data.length) throw new RangeError('truncated record value') }
  const int = (n) => (Number.isSafeInteger(Number(n)) ? Number(n) : n)
  const take = (n) => { need(n); const out = data.slice(at, at + n); at += n; return out }
  const u = (size) => {
    need(size)
    const v = size === 1 ? view.getUint8(at) : size === 2 ? view.getUint16(at) : view.getUint32(at)
    at += size
    return v
  }
  const ext = (length) => {
    const code = view.getInt8(at); at += 1
    const body = take(length)
    if (code !== BIG_INT) throw new RangeError(`unknown value extension type ${code}`)
    let value = 0n
    for (const byte of body) value = (value << 8n) | BigInt(byte)
    if (body.length && body[0] & 0x80) value -= 1n << BigInt(8 * body.length)
    return int(value)
  }
  const read = () => {
    need(1)
    const head = data[at++]
    if (head < 0x80) return head
    if (head >= 0xe0) return head - 256
    if ((head & 0xe0) === 0xa0) return new TextDecoder('utf-8', { fatal: true }).decode(take(head & 0x1f))
    if ((head & 0xf0) === 0x90) return array(head & 0x0f)
    if ((head & 0xf0) === 0x80) return map(head & 0x0f)
    switch (head) {
      case 0xc0: return null
      case 0xc2: return false
      case 0xc3: return true
      case 0xc4: return take(u(1))
      case 0xc5: return take(u(2))
      case 0xc6: return take(u(4))
      case 0xc7: return ext(u(1))
      case 0xc8: return ext(u(2))
      case 0xc9: return ext(u(4))
      case 0xca: need(4); at += 4; return view.getFloat32(at - 4)
      case 0xcb: need(8); at += 8; return view.getFloat64(at - 8)
      case 0xcc: return u(1)
      case 0xcd: return u(2)
      case 0xce: return u(4)
      case 0xcf: need(8); at += 8; return int(view.getBigUint64(at - 8))
      case 0xd0: need(1); at += 1; return view.getInt8(at - 1)
      case 0xd1: need(2); at += 2; return view.getInt16(at - 2)
      case 0xd2: need(4); at += 4; return view.getInt32(at - 4)
      case 0xd3: need(8); at += 8; return int(view.getBigInt64(at - 8))
      case 0xd4: return ext(1)
      case 0xd5: return ext(2)
      case 0xd6: return ext(4)
      case 0xd7: return ext(8)
      case 0xd8: return ext(16)
      case 0xd9: return new TextDecoder('utf-8', { fatal: true }).decode(take(u(1)))
      case 0xda: return new TextDecoder('utf-8', { fatal: true }).decode(take(u(2)))
      case 0xdb: return new TextDecoder('utf-8', { fatal: true }).decode(take(u(4)))
      case 0xdc: return array(u(2))
      case 0xdd: return array(u(4))
      case 0xde: return map(u(2))
      case 0xdf: return map(u(4))
    }
    throw new RangeError(`not an encoded record value (byte 0x${head.toString(16)})`)
  }
  const array = (n) => Array.from({ length: n }, read)
  const map = (n) => {
    const out = {}
    for (let i = 0; i < n; i++) {
      const key = read()
      if (typeof key !== 'string') throw new RangeError('record value maps have string keys')
      out[key] = read()
    }
    return out
  }
  const value = read()
  if (at !== data.length) throw new RangeError('trailing bytes after a record value')
  return value
}

// -- records ----------------------------------------------------------------------------

/** The record calls, bound to the caller's copy of yjs (pass `import * as Y from 'yjs'`). */
export function withYjs (Y) {
  const collection = (ydoc, name) => ydoc.getMap(recordsRoot(name))
  const encoded = (fields) => Object.entries(fields).map(([name, value]) => [name, encodeValue(value)])

  return {
    text: (ydoc, name) => ydoc.getText(textRoot(name)),
    records: collection,

    /** The record's fields (sorted by name), or null; a field that is not replica's encoding is skipped,
     *  as replica skips it. */
    getRecord (ydoc, name, id) {
      const record = collection(ydoc, name).get(id)
      if (!(record instanceof Y.Map)) return null
      const out = {}
      for (const field of [...record.keys()].sort()) {
        try { out[field] = decodeValue(record.get(field)) } catch { /* not replica's encoding: skipped */ }
      }
      return out
    },

    /** Record ids, sorted (Yjs key order differs between replicas). */
    ids: (ydoc, name) => [...collection(ydoc, name).keys()].sort(),

    /** Create or replace a whole record (one transaction). */
    putRecord (ydoc, name, id, fields) {
      const record = new Y.Map(encoded(fields))
      ydoc.transact(() => collection(ydoc, name).set(id, record))
    },

    /** Set some fields of an existing record, and remove those named in `unset`. */
    updateRecord (ydoc, name, id, fields, unset = []) {
      const record = collection(ydoc, name).get(id)
      if (!(record instanceof Y.Map)) throw new RangeError(`no record ${id} in ${name}`)
      const values = encoded(fields)
      ydoc.transact(() => {
        for (const [field, value] of values) record.set(field, value)
        for (const field of unset) record.delete(field)
      })
    },

    deleteRecord (ydoc, name, id) {
      ydoc.transact(() => collection(ydoc, name).delete(id))
    }
  }
}
