// A transform's outputs (`Output`, `Emit`) and what a handler returns: what a
// handler may write and how a mistake is reported. The host import is stubbed
// (`testing/`), so this runs in Node. Run: `node --test plugin-sdk/js/output.test.js`.

import assert from "node:assert/strict";
import { register } from "node:module";
import { test } from "node:test";

register("./testing/hooks.mjs", import.meta.url);
const { Output, Verdict, filterPlugin, transformPlugin } = await import("./switchyard_plugin.js");
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
