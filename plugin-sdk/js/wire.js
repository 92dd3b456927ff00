// The Switchyard wire layout: message batches as one flat byte buffer.
//
// The same layout as the Rust crate `switchyard-wire` (see `wit/types.wit`),
// all integers little-endian:
//
//     batch   = message*
//     message = u64 id, u32 source, u8 priority, u8 flags, str topic,
//               u32 header-count, (str name, str value)*, bytes payload
//     str     = bytes = u32 length, length bytes   (strings are UTF-8)
//
// With FLAG_PAYLOAD_OMITTED set, `bytes payload` is only its u32 length (the
// real payload size) and no bytes follow: filters and balancers see heads only.
// This module imports nothing, so it runs (and is tested) under plain `node`.

/** Flag bit: the payload bytes were left out; only their length is present. */
export const FLAG_PAYLOAD_OMITTED = 1;

/** A malformed buffer: `offset` is where decoding failed, `problem` what was wrong. */
export class WireError extends Error {
  constructor(offset, problem) {
    super(`malformed message batch at byte ${offset}: ${problem}`);
    this.offset = offset;
    this.problem = problem;
  }
}

/**
 * `text` with its ASCII capitals made small and nothing else changed: header names match ASCII
 * case-insensitively, as the Rust SDK and the host match them (`toLowerCase` would match the Kelvin sign
 * "\u212a" to "k").
 */
export function asciiLower(text) {
  return text.replace(/[A-Z]+/g, (capitals) => capitals.toLowerCase());
}

/**
 * One message: `id` (a BigInt), `source`, `priority`, `topic`, `headers` (an
 * array of `[name, value]` pairs in order), `payload` (a Uint8Array, or `null`
 * when the batch carries heads only) and `payloadLen` (always known).
 */
export class Message {
  constructor({ topic, headers = [], payload = new Uint8Array(), id = 0n, priority = 0, source = 0, payloadLen }) {
    this.id = BigInt(id);
    this.source = source;
    this.priority = priority;
    this.topic = topic;
    this.headers = headers.map(([name, value]) => [name, value]);
    this.payload = payload;
    this.payloadLen = payloadLen ?? (payload ? payload.length : 0);
  }

  /** The first header named `name` (ASCII case-insensitive), or `undefined`. */
  header(name) {
    const lowered = asciiLower(name);
    const found = this.headers.find(([key]) => asciiLower(key) === lowered);
    return found && found[1];
  }
}

/**
 * Throw unless `priority` is a priority class, an integer in 0..=255: the byte it is written to would
 * wrap anything else silently (300 to 44, -1 to 255). `call` names what was given it, for the error.
 */
export function checkPriority(priority, call = `priority ${String(priority)}`) {
  if (!Number.isInteger(priority) || priority < 0 || priority > 255) {
    throw new RangeError(`${call}: the priority must be an integer in 0..=255`);
  }
}

/**
 * The type of `value`, for an error: `number`, `undefined`, `null`, or an object's class (`ArrayBuffer`), or
 * its tag where the class has no name (`Generator`).
 */
export function typeName(value) {
  if (value === null) return "null";
  if (typeof value !== "object") return typeof value;
  return value.constructor?.name || value[Symbol.toStringTag] || "object";
}

/**
 * Whether `value` is a Uint8Array (`tag` "Uint8Array"), or an ArrayBuffer (`tag` "ArrayBuffer"), by its tag:
 * inside a component, `instanceof` is false for the bytes the bindings hand over (their prototype is not the
 * plugin's `Uint8Array.prototype`), so checking that way refused every payload as it was.
 */
export function isA(value, tag) {
  return Object.prototype.toString.call(value) === `[object ${tag}]`;
}

// `ignoreBOM`: a string that starts with U+FEFF keeps it, as the Rust and Python codecs keep it (by default a
// TextDecoder drops it as a byte-order mark, and a transform forwarding the message changed its topic).
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const utf8Encoder = new TextEncoder();

class Reader {
  constructor(buf) {
    this.buf = buf;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    this.pos = 0;
  }

  need(length) {
    if (this.pos + length > this.buf.length) throw new WireError(this.pos, "truncated");
    const start = this.pos;
    this.pos += length;
    return start;
  }

  u32() {
    return this.view.getUint32(this.need(4), true);
  }

  /** The next `bytes` field, as a view of the batch (no copy). */
  borrowed() {
    const length = this.u32();
    const start = this.need(length);
    return this.buf.subarray(start, start + length);
  }

  /** The next `bytes` field, copied. */
  bytes() {
    return this.borrowed().slice();
  }

  str() {
    const start = this.pos;
    const raw = this.borrowed();
    try {
      return utf8.decode(raw);
    } catch {
      throw new WireError(start, "string is not UTF-8");
    }
  }

  message() {
    const at = this.need(14);
    const id = this.view.getBigUint64(at, true);
    const source = this.view.getUint32(at + 8, true);
    const priority = this.buf[at + 12];
    const flags = this.buf[at + 13];
    const topic = this.str();
    const count = this.u32();
    const headers = [];
    for (let i = 0; i < count; i++) headers.push([this.str(), this.str()]);
    if (flags & FLAG_PAYLOAD_OMITTED) {
      return new Message({ id, source, priority, topic, headers, payload: null, payloadLen: this.u32() });
    }
    return new Message({ id, source, priority, topic, headers, payload: this.bytes() });
  }
}

/** The messages of `batch` (a Uint8Array), in order; throws `WireError`. */
export function decode(batch) {
  const reader = new Reader(batch);
  const messages = [];
  while (reader.pos < batch.length) messages.push(reader.message());
  return messages;
}

/**
 * A growable byte buffer the encoder appends to. It writes strings in place (`TextEncoder.encodeInto`)
 * and allocates only when it grows: the JavaScript engine inside a component gives back the memory of
 * dropped buffers too late, so a plugin that made buffers on every call reached its memory cap (see
 * `switchyard_plugin.js`, which reuses one writer for every answer).
 */
export class BatchWriter {
  constructor() {
    this.buf = new Uint8Array(256);
    this.view = new DataView(this.buf.buffer);
    this.length = 0;
  }

  reserve(extra) {
    if (this.length + extra <= this.buf.length) return;
    const grown = new Uint8Array(Math.max(this.buf.length * 2, this.length + extra));
    grown.set(this.buf.subarray(0, this.length));
    this.buf = grown;
    this.view = new DataView(grown.buffer);
  }

  u8(value) {
    this.reserve(1);
    this.buf[this.length++] = value;
  }

  u32(value) {
    this.reserve(4);
    this.view.setUint32(this.length, value, true);
    this.length += 4;
  }

  /** Append a `u64`: a BigInt, or a Number (a safe integer: no BigInt made, they cost inside a component). */
  u64(value) {
    this.reserve(8);
    if (typeof value === "bigint") {
      this.view.setBigUint64(this.length, value, true);
    } else {
      this.view.setUint32(this.length, value % 0x1_0000_0000, true);
      this.view.setUint32(this.length + 4, Math.floor(value / 0x1_0000_0000), true);
    }
    this.length += 8;
  }

  bytes(raw) {
    this.u32(raw.length);
    this.reserve(raw.length);
    this.buf.set(raw, this.length);
    this.length += raw.length;
  }

  /**
   * Append `text` as UTF-8 with its byte length first, encoded straight into the buffer. `what` names it
   * for the error when it is not a string (whose missing `length` would otherwise fail obscurely).
   */
  str(text, what = "a string field") {
    if (typeof text !== "string") throw new TypeError(`${what} must be a string (got ${typeName(text)})`);
    // A UTF-16 code unit takes at most three bytes of UTF-8.
    this.reserve(4 + 3 * text.length);
    const { written } = utf8Encoder.encodeInto(text, this.buf.subarray(this.length + 4));
    this.view.setUint32(this.length, written, true);
    this.length += 4 + written;
  }

  /**
   * Append `message`; `headsOnly` leaves the payload bytes out and writes only their length. A message is
   * written whole or not at all: when a field cannot be written, what was written of the message is dropped
   * before the error propagates, so a handler that catches it writes on into a well-formed batch (half a
   * message would make the host refuse the whole answer as malformed).
   */
  message(message, headsOnly = false) {
    const start = this.length;
    try {
      const omitted = headsOnly || message.payload === null;
      checkPriority(message.priority);
      this.reserve(14);
      this.view.setBigUint64(this.length, BigInt(message.id), true);
      this.view.setUint32(this.length + 8, message.source, true);
      this.buf[this.length + 12] = message.priority;
      this.buf[this.length + 13] = omitted ? FLAG_PAYLOAD_OMITTED : 0;
      this.length += 14;
      this.str(message.topic, "a topic");
      this.u32(message.headers.length);
      for (const [name, value] of message.headers) {
        this.str(name, "a header name");
        this.str(value, "a header value");
      }
      if (omitted) this.u32(message.payloadLen);
      else if (typeof message.payload === "string") this.str(message.payload);
      else if (isA(message.payload, "Uint8Array")) this.bytes(message.payload);
      else throw new TypeError(`a payload must be a Uint8Array or a string (got ${typeName(message.payload)})`);
    } catch (error) {
      this.truncate(start);
      throw error;
    }
  }

  /** Drop everything written after byte `length`. */
  truncate(length) {
    this.length = length;
  }

  /** The bytes written so far, as a view of the writer's buffer: valid until it is written again. */
  written() {
    return this.buf.subarray(0, this.length);
  }

  /** A copy of the bytes written so far. */
  finish() {
    return this.buf.slice(0, this.length);
  }
}

/** The batch holding `messages`, in order, as a Uint8Array. */
export function encode(messages, headsOnly = false) {
  const writer = new BatchWriter();
  for (const message of messages) writer.message(message, headsOnly);
  return writer.finish();
}

/** The kinds of error a filter's decision can carry, numbered as the WIT `error` orders them. */
export const ErrorKind = Object.freeze({ REJECTED: 0, RETRYABLE: 1, FAILED: 2 });

/** The tag of a decision that is a verdict, not an error. */
const VERDICT = 3;

/**
 * Append the head of a filter's answer (the WIT `decisions`) to `writer`: its
 * decisions, to be followed by its counts (`writeCount`).
 *
 *     decisions = u32 n, decision{n}, count*
 *     decision  = u8 3, u8 verdict (1 keep, 0 drop) | u8 kind, str reason
 *     count     = str name, u64 delta
 *
 * `decisions` holds one entry per message: `true` keeps it, `false` drops it,
 * `{ kind, reason }` is an error (`kind` one of `ErrorKind`).
 */
export function writeDecisions(writer, decisions) {
  writer.u32(decisions.length);
  for (const decision of decisions) {
    if (typeof decision === "boolean") {
      writer.u8(VERDICT);
      writer.u8(decision ? 1 : 0);
    } else {
      writer.u8(decision.kind);
      writer.str(decision.reason);
    }
  }
}

/** Append one count of a filter's answer, after its decisions: add `delta` to the counter `name`. */
export function writeCount(writer, name, delta) {
  writer.str(name);
  writer.u64(delta);
}

/** A filter's answer as a Uint8Array of its own: `decisions` as `writeDecisions` takes them, `counts` `[name, delta]` pairs. */
export function encodeDecisions(decisions, counts = []) {
  const writer = new BatchWriter();
  writeDecisions(writer, decisions);
  for (const [name, delta] of counts) writeCount(writer, name, delta);
  return writer.finish();
}
