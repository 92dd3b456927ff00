// `count` sums a call's increments by name, exactly past 2^53 and up to the
// largest u64, where a sum stops, and they travel in the filter's answer,
// after its decisions; a delta that is not a non-negative integer, or a name
// that is not a string, is refused and counts nothing (and fails only the
// message whose handler gave it); answers are written into one buffer, not a new
// one each call (which filled a plugin's memory cap in `switchyard bench`). The host import is stubbed (`testing/`), so
// this runs in Node. Run: `node --test plugin-sdk/js/counts.test.js`.

import assert from "node:assert/strict";
import { register } from "node:module";
import { test } from "node:test";

register("./testing/hooks.mjs", import.meta.url);
const { Rejected, Verdict, count, filterPlugin } = await import("./switchyard_plugin.js");
const { ErrorKind, Message, encode, encodeDecisions } = await import("./wire.js");

const batch = encode([
  new Message({ id: 1n, topic: "orders", headers: [], payload: new Uint8Array([1, 2, 3]) }),
  new Message({ id: 2n, topic: "orders", headers: [], payload: new Uint8Array([4]) }),
]);

test("a call's counts are summed by name and travel in the filter's answer", () => {
  const { filter } = filterPlugin(() => {
    count("seen");
    count("bytes", 3n);
    count("none", 0);
    return Verdict.KEEP;
  });
  const expected = encodeDecisions([true, true], [["seen", 2], ["bytes", 6]]);
  assert.deepStrictEqual(new Uint8Array(filter.filter(batch)), expected);
  // The next call starts from zero.
  const { filter: quiet } = filterPlugin(() => Verdict.DROP);
  assert.deepStrictEqual(new Uint8Array(quiet.filter(batch)), encodeDecisions([false, false]));
});

test("a sum is exact past 2^53 and stops at the largest u64, as the host's counters do", () => {
  const max = (1n << 64n) - 1n;
  const { filter } = filterPlugin(() => {
    count("past-safe", Number.MAX_SAFE_INTEGER);
    count("huge", max - 3n);
    count("huger", 1n << 70n);
    return Verdict.KEEP;
  });
  // Two messages: each counter counted twice.
  const expected = encodeDecisions(
    [true, true],
    [["past-safe", 2n * BigInt(Number.MAX_SAFE_INTEGER)], ["huge", max], ["huger", max]],
  );
  assert.deepStrictEqual(new Uint8Array(filter.filter(batch)), expected);
});

test("a delta that is not a non-negative integer is refused and counts nothing", () => {
  for (const delta of [-1, -1n, 1.5, Number.MAX_SAFE_INTEGER + 1, "2", null]) {
    assert.throws(() => count("seen", delta), RangeError, `delta ${String(delta)}`);
  }
  const { filter } = filterPlugin(() => Verdict.KEEP);
  assert.deepStrictEqual(new Uint8Array(filter.filter(batch)), encodeDecisions([true, true]));
});

test("a name that is not a string is refused where it is given and counts nothing", () => {
  for (const name of [42, null, undefined, Symbol("seen"), Object.create(null)]) {
    assert.throws(() => count(name), TypeError, `name ${typeof name}`);
  }
  const { filter } = filterPlugin(() => Verdict.KEEP);
  assert.deepStrictEqual(new Uint8Array(filter.filter(batch)), encodeDecisions([true, true]));
});

// What goes wrong with one message fails that message alone: were the export to throw, the host would run
// each message again on its own and count the one at fault a plugin fault, not rejected, which a route
// with `on_error = "fail-open"` lets through.
test("a bad counter name or an odd exception fails its message alone, and the next call is clean", () => {
  const three = encode([0n, 1n, 2n].map((id) => new Message({ id, topic: "orders" })), true);
  const failed = (reason) => ({ kind: ErrorKind.FAILED, reason });
  const cases = [
    [() => count(42), failed("TypeError: count(42, 1): the name must be a string (got number)")],
    [() => { throw Object.create(null); }, failed("Error: object")],
    [() => { throw { name: Symbol("odd"), message: Symbol("odd") }; }, failed("Symbol(odd): Symbol(odd)")],
    [() => { const error = new Rejected(); error.message = 7; throw error; }, { kind: ErrorKind.REJECTED, reason: "7" }],
    [() => { throw new Rejected("not ours: \ud800"); }, { kind: ErrorKind.REJECTED, reason: "not ours: \ufffd" }],
  ];
  for (const [wrong, decision] of cases) {
    const { filter } = filterPlugin((message) => {
      count("seen");
      if (message.id === 1n) wrong();
      return Verdict.KEEP;
    });
    assert.deepStrictEqual(new Uint8Array(filter.filter(three)), encodeDecisions([true, decision, true], [["seen", 3]]));
  }
  const { filter: quiet } = filterPlugin(() => Verdict.DROP);
  assert.deepStrictEqual(new Uint8Array(quiet.filter(batch)), encodeDecisions([false, false]));
});

test("answers are written into one buffer kept from call to call", () => {
  const { filter } = filterPlugin(() => Verdict.KEEP);
  const first = filter.filter(batch).buffer;
  for (let call = 0; call < 100; call++) {
    assert.equal(filter.filter(batch).buffer, first, `call ${call} wrote into another buffer`);
  }
});
