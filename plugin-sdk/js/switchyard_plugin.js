// Write Switchyard plugins in JavaScript.
//
// A plugin is one module that componentize-js turns into a WASM component
// (see this package's README):
//
//     import { transformPlugin, config } from "switchyard-plugin";
//     export const { transform, format } = transformPlugin((message, out) => {
//       out.emit(message).withHeader("x-stamp", config("stamp") ?? "js").finish();
//     });
//
// Here: errors (what a handler throws), host functions (log, config,
// nowMillis, count), Output (a transform's outputs) and the functions that
// build each kind's exports. The byte layout and Message live in `wire.js`.

import * as host from "switchyard:plugin/host@0.1.0";

import {
  BatchWriter,
  ErrorKind,
  Message,
  WireError,
  asciiLower,
  checkPriority,
  decode,
  isA,
  typeName,
  writeCount,
  writeDecisions,
} from "./wire.js";

export { Message, WireError, decode, encode } from "./wire.js";

/** The version of the wire layout this SDK speaks (the WIT `format` export). */
export const FORMAT_VERSION = 1;

/** Base of the errors a handler throws; its text travels to the host. */
export class PluginError extends Error {}
/** The message is bad: the host dead-letters it and never retries. */
export class Rejected extends PluginError {}
/** A transient condition: the host may retry the message. */
export class Retryable extends PluginError {}
/** The plugin itself failed; any other exception a handler throws is reported as this too. */
export class Failed extends PluginError {}

/** What a filter decided about one message. */
export const Verdict = Object.freeze({ KEEP: "keep", DROP: "drop" });

/** The host's log levels (the WIT `level`) by the names `log` takes, lower-cased: the WIT's own, and "warning". */
const LEVELS = new Map([
  ["trace", "trace"],
  ["debug", "debug"],
  ["info", "info"],
  ["warn", "warn"],
  ["warning", "warn"],
  ["error", "error"],
]);

/** Write a log line attributed to this plugin (`level`: trace, debug, info, warn or warning, error; any case). */
export function log(level, message) {
  const witLevel = typeof level === "string" ? LEVELS.get(level.toLowerCase()) : undefined;
  if (witLevel === undefined) {
    throw new RangeError(`log(${String(level)}, ...): the level must be one of trace, debug, info, warn (or warning), error`);
  }
  host.log(witLevel, message);
}

/** This plugin's configuration value for `key` (`[[plugin]] config`), or `undefined`. */
export function config(key) {
  return host.config(key);
}

/** Wall-clock time in milliseconds since the Unix epoch (a BigInt). */
export function nowMillis() {
  return host.nowMillis();
}

/**
 * `value` as a string, as `String` makes it, or its type where that throws (an object without a prototype):
 * what a handler throws, or gives `count`, may be anything.
 */
function text(value) {
  try {
    return String(value);
  } catch {
    return typeName(value);
  }
}

/** The largest total a counter holds, as the host's counters do (a u64). */
const COUNT_MAX = (1n << 64n) - 1n;

/**
 * Counter increments not yet handed to the host, by name: summed here and
 * handed over once per call (`drainCounts`), as the Rust SDK does, instead of
 * a host call per `count`. A sum is a Number while it is a safe integer and a
 * BigInt past that, so that it stays exact up to `COUNT_MAX`, where it stops.
 */
const counts = new Map();

/**
 * Add `delta` (a non-negative integer: a safe-integer Number, or a BigInt) to
 * this plugin's counter `name` (a string, a host metric). The increments reach
 * the host when the current call returns; a counter's total stops at 2^64 - 1.
 *
 * A name or delta of the wrong kind is refused here, in the handler that gave
 * it, so that it fails that message alone: once summed, it would fail the whole
 * call as the totals are handed over.
 */
export function count(name, delta = 1) {
  if (typeof name !== "string") {
    throw new TypeError(`count(${text(name)}, ${text(delta)}): the name must be a string (got ${typeName(name)})`);
  }
  const valid = typeof delta === "bigint" ? delta >= 0n : Number.isSafeInteger(delta) && delta >= 0;
  if (!valid) {
    throw new RangeError(`count(${name}, ${text(delta)}): the delta must be a non-negative integer`);
  }
  const sum = counts.get(name) ?? 0;
  if (typeof sum === "number" && typeof delta === "number" && Number.isSafeInteger(sum + delta)) {
    counts.set(name, sum + delta);
  } else {
    const exact = BigInt(sum) + BigInt(delta);
    counts.set(name, exact > COUNT_MAX ? COUNT_MAX : exact);
  }
}

/**
 * Hand `each(name, total)` every counter's total since the last drain; the totals start again from zero,
 * also when `each` throws (what was counted would otherwise be handed over again with the next call's).
 */
function drainCounts(each) {
  try {
    for (const [name, total] of counts) if (total > 0) each(name, total);
  } finally {
    counts.clear();
  }
}

/** Hand the summed increments to the host, a `count` call per counter. */
function flushCounts() {
  drainCounts((name, total) => host.count(name, BigInt(total)));
}

/**
 * The kind (one of `ErrorKind`) and text of an exception a handler threw: a string, whatever was thrown (a
 * message that is not a string, an object without a prototype). It is called for one message, and an exception
 * here would fail every message of the call.
 */
function errorParts(error) {
  if (error instanceof Rejected) return { kind: ErrorKind.REJECTED, reason: text(error.message) };
  if (error instanceof Retryable) return { kind: ErrorKind.RETRYABLE, reason: text(error.message) };
  if (error instanceof PluginError || error instanceof WireError) return { kind: ErrorKind.FAILED, reason: text(error.message) };
  return { kind: ErrorKind.FAILED, reason: `${text(error?.name ?? "Error")}: ${text(error?.message ?? error)}` };
}

/** The WIT `error` for an exception a handler threw. */
function witError(error) {
  const { kind, reason } = errorParts(error);
  return { tag: ["rejected", "retryable", "failed"][kind], val: reason };
}

/**
 * Why a handler that returned a Promise (an `async` one) fails its message: the export answers the host
 * before the Promise settles, so what the handler does after its first `await` is lost, and a transform's
 * message would vanish without an error.
 */
const SYNCHRONOUS = "plugin handlers must be synchronous: the export answers the host without awaiting what they return";

/**
 * Why a transform that returned a value fails its message: nothing reads what it returns, so a message it
 * meant to pass on (`(message) => message`) would vanish without an error, as would what a generator
 * function was to do.
 */
const OUTPUTS = "a transform writes its outputs with out.forward(message) or out.emit(message)...finish() and returns nothing";

/** Whether a handler's result is a Promise (or any thenable). */
function isPromise(result) {
  return typeof result?.then === "function";
}

/**
 * The writer of every export's answer, reused from call to call. The JavaScript engine inside a
 * component gives back the memory of a buffer dropped at the end of a call too late: a transform, and
 * then a filter, that made their buffers anew for every call stopped `switchyard bench` at the default
 * 64 MiB memory cap. An answer is copied out of the component as the export returns, so one writer
 * serves all.
 */
const answer = new BatchWriter();

/** The WIT `format` export: which wire layout this plugin speaks. */
export const format = Object.freeze({ version: () => FORMAT_VERSION });

/**
 * The output messages of one transform call, encoded as they are written.
 * Every output carries the index of the input it came from and that input's id.
 */
export class Output {
  /** Outputs written to `writer` (a `BatchWriter`), from its current end. */
  constructor(writer = new BatchWriter()) {
    this.writer = writer;
    this.source = 0;
    /** How many `emit`s are neither finished nor given a value they refused. */
    this.unfinished = 0;
  }

  /** Throw if an `emit` was left unfinished: nothing is written without `finish()`, so its output would vanish. */
  checkFinished() {
    if (this.unfinished > 0) {
      throw new TypeError("out.emit(message) was not finished: an output is written only by its finish()");
    }
  }

  /** Pass `message` on unchanged. */
  forward(message) {
    this.emit(message).finish();
  }

  /** Start an output copied from `message`; change it with the `with*` methods, then `finish()`. */
  emit(message) {
    return new Emit(this, message);
  }
}

/**
 * An output message being built, see `Output.emit`. Nothing is written until `finish()`; one left unfinished
 * fails the message it came from.
 */
export class Emit {
  constructor(out, message) {
    this.out = out;
    this.message = new Message({ ...message, payload: message.payload ?? new Uint8Array(), payloadLen: undefined });
    this.pending = true;
    out.unfinished += 1;
  }

  /** This output is no longer awaited: it is being finished, or was given up. */
  settle() {
    if (this.pending) {
      this.pending = false;
      this.out.unfinished -= 1;
    }
  }

  /** `error`, with this output given up: a handler that catches a value refused may go on without it. */
  refused(error) {
    this.settle();
    return error;
  }

  /** Replace the topic (a string). */
  withTopic(topic) {
    if (typeof topic !== "string") {
      throw this.refused(
        new TypeError(`withTopic(${String(topic)}): the topic must be a string (got ${typeName(topic)})`),
      );
    }
    this.message.topic = topic;
    return this;
  }

  /** Replace the payload: a Uint8Array, an ArrayBuffer (its bytes, not copied) or a string (encoded as UTF-8). */
  withPayload(payload) {
    if (isA(payload, "ArrayBuffer")) payload = new Uint8Array(payload);
    else if (typeof payload !== "string" && !isA(payload, "Uint8Array")) {
      throw this.refused(
        new TypeError(`withPayload: the payload must be a Uint8Array, an ArrayBuffer or a string (got ${typeName(payload)})`),
      );
    }
    // A string is encoded as it is written to the answer, in place.
    this.message.payload = payload;
    return this;
  }

  /** Replace the priority class: an integer in 0..=255, higher is more urgent. */
  withPriority(priority) {
    try {
      checkPriority(priority, `withPriority(${String(priority)})`);
    } catch (error) {
      throw this.refused(error);
    }
    this.message.priority = priority;
    return this;
  }

  /**
   * Set header `name`: the first header of that name (ASCII case-insensitive)
   * takes the new name and value, later ones are removed, and a new name is appended. Both are strings.
   */
  withHeader(name, value) {
    if (typeof name !== "string" || typeof value !== "string") {
      throw this.refused(
        new TypeError(
          `withHeader(${String(name)}, ${String(value)}): a header's name and value must be strings ` +
            `(got ${typeName(name)}, ${typeName(value)})`,
        ),
      );
    }
    const lowered = asciiLower(name);
    let replaced = false;
    const headers = [];
    for (const [key, old] of this.message.headers) {
      if (asciiLower(key) !== lowered) headers.push([key, old]);
      else if (!replaced) {
        headers.push([name, value]);
        replaced = true;
      }
    }
    if (!replaced) headers.push([name, value]);
    this.message.headers = headers;
    return this;
  }

  /** Write the message to the output batch (it is finished also when it cannot be written and this throws). */
  finish() {
    this.settle();
    this.message.source = this.out.source;
    this.out.writer.message(this.message);
  }
}

/**
 * The exports of a filter plugin: `decide(message)` returns a `Verdict` for
 * each message head (no payload bytes: `message.payload` is null), in batch
 * order; throw `Rejected`, `Retryable` or `Failed` to report an error for that
 * message alone. Use as `export const { filter, format } = filterPlugin(decide);`.
 */
export function filterPlugin(decide) {
  const filter = (messages) => {
    let batch;
    answer.truncate(0);
    try {
      batch = decode(messages);
    } catch (error) {
      writeDecisions(answer, [errorParts(error)]);
      drainCounts((name, total) => writeCount(answer, name, total));
      return answer.written();
    }
    const decisions = batch.map((message) => {
      try {
        const verdict = decide(message);
        if (isPromise(verdict)) throw new TypeError(`the filter returned a Promise, not a Verdict: ${SYNCHRONOUS}`);
        if (verdict !== Verdict.KEEP && verdict !== Verdict.DROP) {
          throw new TypeError(`the filter returned ${String(verdict)}, not a Verdict`);
        }
        return verdict === Verdict.KEEP;
      } catch (error) {
        return errorParts(error);
      }
    });
    writeDecisions(answer, decisions);
    drainCounts((name, total) => writeCount(answer, name, total));
    return answer.written();
  };
  return { filter: { filter }, format };
}

/**
 * The exports of a transform plugin: `transform(message, out)` is called once
 * per message (payload included), in batch order. Write zero outputs to drop
 * it, `out.forward(message)` to pass it on, `out.emit(message)...finish()` to
 * pass on a changed copy, as many as you like to split it. An exception
 * discards that message's outputs and reports the error for it alone, and so
 * does returning a value or leaving an `emit` unfinished. Use as
 * `export const { transform, format } = transformPlugin(transform);`.
 */
export function transformPlugin(handler) {
  const transform = (messages) => {
    answer.truncate(0);
    const out = new Output(answer);
    const errors = [];
    let batch;
    try {
      batch = decode(messages);
    } catch (error) {
      batch = [];
      errors.push([0, witError(error)]);
    }
    batch.forEach((message, index) => {
      out.source = index;
      out.unfinished = 0;
      const mark = out.writer.length;
      try {
        const result = handler(message, out);
        if (isPromise(result)) throw new TypeError(`the transform returned a Promise: ${SYNCHRONOUS}`);
        out.checkFinished();
        if (result !== undefined) throw new TypeError(`the transform returned ${typeName(result)}: ${OUTPUTS}`);
      } catch (error) {
        out.writer.truncate(mark);
        errors.push([index, witError(error)]);
      }
    });
    flushCounts();
    return { messages: answer.written(), errors };
  };
  return { transform: { transform }, format };
}
