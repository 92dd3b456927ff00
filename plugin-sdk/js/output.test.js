// A transform's outputs (`Output`, `Emit`) and what a handler returns: what a
// handler may write and how a mistake is reported. The host import is stubbed
// (`testing/`), so this runs in Node. Run: `node --test plugin-sdk/js/output.test.js`.

import assert from "node:assert/strict";
import { register } from "node:module";
import { test } from "node:test";
import { runInNewContext } from "node:vm";

register("./testing/hooks.mjs", import.meta.url);
const { Output, Verdict, filterPlugin, log, transformPlugin } = await import("./switchyard_plugin.js");
const { logged } = await import("./testing/host.js");
const { ErrorKind, Message, decode, encode, encodeDecisions } = await import("./wire.js");

const input = new Message({ id: 7n, topic: "orders", headers: [["x-a", "1"]], payload: new Uint8Array([1, 2]) });

test("a priority outside 0..=255, or not an integer, is refused, not wrapped", () => {
  const out = new Output();
  for (const priority of [256, 300, -1, 1.5, NaN, "3", null, 3n]) {
    assert.throws(
      () => out.emit(input).withPriority(priority),
      { name: "RangeError", message: `withPriority(${String(priority)}): the priority must be an integer in 0..=255` },
    );
  }
  // A message built by hand is checked as it is written.
  assert.throws(() => out.forward(new Message({ ...input, priority: 300 })), {
    name: "RangeError",
    message: "priority 300: the priority must be an integer in 0..=255",
  });
  out.emit(input).withPriority(0).finish();
  out.emit(input).withPriority(255).finish();
  assert.deepStrictEqual(decode(out.writer.finish()).map((message) => message.priority), [0, 255]);
});

test("a value of the wrong type is refused with a TypeError saying what is expected", () => {
  const out = new Output();
  const refusals = [
    [() => out.emit(input).withHeader("x-n", 5), "withHeader(x-n, 5): a header's name and value must be strings (got string, number)"],
    [() => out.emit(input).withHeader(null, "v"), "withHeader(null, v): a header's name and value must be strings (got null, string)"],
    [() => out.emit(input).withTopic(7), "withTopic(7): the topic must be a string (got number)"],
    [() => out.emit(input).withPayload(12345), "withPayload: the payload must be a Uint8Array, an ArrayBuffer or a string (got number)"],
    [() => out.emit(input).withPayload([1, 2]), "withPayload: the payload must be a Uint8Array, an ArrayBuffer or a string (got Array)"],
    // A message built by hand is checked as it is written.
    [() => out.forward(new Message({ ...input, topic: undefined })), "a topic must be a string (got undefined)"],
    [() => out.forward(new Message({ ...input, headers: [["x-n", 5]] })), "a header value must be a string (got number)"],
    [() => out.forward(new Message({ ...input, payload: 5 })), "a payload must be a Uint8Array or a string (got number)"],
  ];
  for (const [write, message] of refusals) assert.throws(write, { name: "TypeError", message });
  assert.equal(out.writer.length, 0);
});

test("a payload may be a Uint8Array, an ArrayBuffer or a string, of this realm or another", () => {
  const out = new Output();
  out.emit(input).withPayload(new Uint8Array([1, 2, 3])).finish();
  out.emit(input).withPayload(new Uint8Array([1, 2, 3]).buffer).finish();
  out.emit(input).withPayload("\u0001\u0002\u0003").finish();
  // Inside a component, the bytes the bindings hand over are another realm's: `instanceof` is false for them.
  const foreign = runInNewContext("new Uint8Array([1, 2, 3])");
  out.forward(new Message({ ...input, payload: foreign }));
  out.emit(input).withPayload(foreign).finish();
  out.emit(input).withPayload(foreign.buffer).finish();
  const payloads = decode(out.writer.finish()).map((message) => [...message.payload]);
  assert.deepStrictEqual(payloads, Array(6).fill([1, 2, 3]));
});

test("log takes the host's levels in any case, and warning for warn; another level is refused", () => {
  logged.length = 0;
  for (const level of ["trace", "debug", "info", "warn", "warning", "WARNING", "Error"]) log(level, level);
  assert.deepStrictEqual(logged.map(([level]) => level), ["trace", "debug", "info", "warn", "warn", "warn", "error"]);
  for (const level of ["fatal", "", null]) {
    assert.throws(() => log(level, "x"), {
      name: "RangeError",
      message: `log(${String(level)}, ...): the level must be one of trace, debug, info, warn (or warning), error`,
    });
  }
});

test("a message that cannot be written leaves the batch as it was, so the handler may go on", () => {
  const out = new Output();
  out.forward(input);
  const before = out.writer.finish();
  // The topic and first header are written before the bad value is reached.
  const bad = new Message({ ...input, headers: [["x-a", "1"], ["x-n", 5]] });
  assert.throws(() => out.forward(bad));
  assert.deepStrictEqual(out.writer.finish(), before);
  out.forward(input);
  assert.deepStrictEqual(decode(out.writer.finish()), [input, input]);
});

test("header names match ASCII case-insensitively and no other way", () => {
  // The Kelvin sign is "k" to `toLowerCase`, not to the Rust SDK and the host.
  const message = new Message({ topic: "orders", headers: [["\u212a", "kelvin"], ["X-Tenant", "acme"]] });
  assert.deepStrictEqual([message.header("k"), message.header("x-TENANT")], [undefined, "acme"]);
  const out = new Output();
  out.emit(message).withHeader("k", "1").withHeader("x-tenant", "other").finish();
  const headers = [["\u212a", "kelvin"], ["x-tenant", "other"], ["k", "1"]];
  assert.deepStrictEqual(decode(out.writer.finish())[0].headers, headers);
});

const ASYNC = "plugin handlers must be synchronous: the export answers the host without awaiting what they return";

test("an async transform fails each message, with what it wrote discarded, instead of dropping it silently", () => {
  const { transform } = transformPlugin(async (message, out) => {
    out.forward(message);
    await null;
    out.forward(message);
  });
  const { messages, errors } = transform.transform(encode([input, input]));
  assert.equal(messages.length, 0);
  const failed = { tag: "failed", val: `TypeError: the transform returned a Promise: ${ASYNC}` };
  assert.deepStrictEqual(errors, [[0, failed], [1, failed]]);
});

test("an async filter fails each message, saying why", () => {
  const { filter } = filterPlugin(async () => Verdict.KEEP);
  const failed = { kind: ErrorKind.FAILED, reason: `TypeError: the filter returned a Promise, not a Verdict: ${ASYNC}` };
  assert.deepStrictEqual(new Uint8Array(filter.filter(encode([input], true))), encodeDecisions([failed]));
});

const OUTPUTS = "a transform writes its outputs with out.forward(message) or out.emit(message)...finish() and returns nothing";
const UNFINISHED = "out.emit(message) was not finished: an output is written only by its finish()";

/** What the transform `handler` answers for `messages`: its outputs as [id, source, header x-y] and its errors. */
function transformed(handler, messages) {
  const { transform } = transformPlugin(handler);
  const { messages: outputs, errors } = transform.transform(encode(messages));
  return [decode(outputs).map((message) => [message.id, message.source, message.header("x-y")]), errors];
}

const three = [0n, 1n, 2n].map((id) => new Message({ id, topic: "orders" }));

test("a transform that returns a value fails its message, with what it wrote discarded, instead of dropping it", () => {
  const slips = [
    [(message) => message, "Message"],
    [function* (message, out) { out.forward(message); }, "Generator"],
    [(message, out) => { out.forward(message); return true; }, "boolean"],
    [() => null, "null"],
  ];
  for (const [handler, returned] of slips) {
    const failed = { tag: "failed", val: `TypeError: the transform returned ${returned}: ${OUTPUTS}` };
    assert.deepStrictEqual(transformed(handler, [three[1]]), [[], [[0, failed]]]);
  }
});

test("an emit left unfinished fails its message alone, with what it wrote discarded, instead of dropping it", () => {
  const failed = { tag: "failed", val: `TypeError: ${UNFINISHED}` };
  const stampedAll = (message, out) => out.emit(message).withHeader("x-y", "z");
  assert.deepStrictEqual(transformed(stampedAll, three), [[], [[0, failed], [1, failed], [2, failed]]]);
  const stampedButOne = (message, out) => {
    out.forward(message);
    const stamped = out.emit(message).withHeader("x-y", "z");
    if (message.id !== 1n) stamped.finish();
  };
  const outputs = [[0n, 0, undefined], [0n, 0, "z"], [2n, 2, undefined], [2n, 2, "z"]];
  assert.deepStrictEqual(transformed(stampedButOne, three), [outputs, [[1, failed]]]);
});

test("an emit given a value it refuses is given up, so a handler that catches the error may go on", () => {
  const refusals = [
    (emit) => emit.withHeader("x-y", 5),
    (emit) => emit.withTopic(7),
    (emit) => emit.withPayload(5),
    (emit) => emit.withPriority(300),
  ];
  for (const refuse of refusals) {
    const handler = (message, out) => {
      try {
        refuse(out.emit(message)).finish();
      } catch {
        out.emit(message).withHeader("x-y", "instead").finish();
      }
    };
    assert.deepStrictEqual(transformed(handler, [three[1]]), [[[1n, 0, "instead"]], []]);
  }
});
