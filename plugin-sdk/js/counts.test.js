// `count` sums a call's increments by name, exactly past 2^53 and up to the
// largest u64, where a sum stops, and they travel in the filter's answer,
// after its decisions; a delta that is not a non-negative integer is
// refused and counts nothing; answers are written into one buffer, not a new
// one each call (which filled a plugin's memory cap in `switchyard bench`). The host import is stubbed (`testing/`), so
// this runs in Node. Run: `node --test plugin-sdk/js/counts.test.js`.

import assert from "node:assert/strict";
import { register } from "node:module";
import { test } from "node:test";

register("./testing/hooks.mjs", import.meta.url);
const { Verdict, count, filterPlugin } = await import("./switchyard_plugin.js");
const { Message, encode, encodeDecisions } = await import("./wire.js");

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

test("answers are written into one buffer kept from call to call", () => {
  const { filter } = filterPlugin(() => Verdict.KEEP);
  const first = filter.filter(batch).buffer;
  for (let call = 0; call < 100; call++) {
    assert.equal(filter.filter(batch).buffer, first, `call ${call} wrote into another buffer`);
  }
});
