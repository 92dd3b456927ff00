// The codec against the golden vectors (`plugin-sdk/wire/vectors/`): every
// `NAME.bin` decodes to the messages of `NAME.json`, and those encode to
// exactly `NAME.bin`; every filter answer of `decisions/NAME.json` encodes to
// exactly `decisions/NAME.bin`. Run: `node --test plugin-sdk/js/vectors.test.js`.

import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { test } from "node:test";

import { ErrorKind, Message, decode, encode, encodeDecisions } from "./wire.js";

const vectors = new URL("../wire/vectors/", import.meta.url);

/** The Message a vector's JSON entry describes. */
function expected(entry) {
  const omitted = "payload_omitted" in entry;
  return new Message({
    id: BigInt(entry.id),
    source: entry.source,
    priority: entry.priority,
    topic: entry.topic,
    headers: entry.headers,
    payload: omitted ? null : new Uint8Array(Buffer.from(entry.payload, "base64")),
    payloadLen: omitted ? entry.payload_omitted : undefined,
  });
}

const names = readdirSync(vectors).filter((file) => file.endsWith(".bin")).map((file) => file.slice(0, -4)).sort();

test("there are vectors", () => assert.ok(names.length > 0));

for (const name of names) {
  test(`vector ${name} decodes to its json and encodes to its bytes`, () => {
    const raw = new Uint8Array(readFileSync(new URL(`${name}.bin`, vectors)));
    const messages = JSON.parse(readFileSync(new URL(`${name}.json`, vectors), "utf8")).messages.map(expected);
    assert.deepStrictEqual(decode(raw), messages);
    assert.deepStrictEqual(encode(messages), raw);
  });
}

const answers = new URL("decisions/", vectors);
const answerNames = readdirSync(answers).filter((file) => file.endsWith(".bin")).map((file) => file.slice(0, -4)).sort();

test("there are filter answer vectors", () => assert.ok(answerNames.length > 0));

/** A decision as `encodeDecisions` takes it, from a vector's JSON spelling. */
function decision(entry) {
  if (entry === "keep" || entry === "drop") return entry === "keep";
  const [[kind, reason]] = Object.entries(entry);
  return { kind: ErrorKind[kind.toUpperCase()], reason };
}

for (const name of answerNames) {
  test(`filter answer ${name} encodes to its bytes`, () => {
    const raw = new Uint8Array(readFileSync(new URL(`${name}.bin`, answers)));
    const vector = JSON.parse(readFileSync(new URL(`${name}.json`, answers), "utf8"));
    const counts = vector.counts.map(([counter, delta]) => [counter, BigInt(delta)]);
    assert.deepStrictEqual(encodeDecisions(vector.decisions.map(decision), counts), raw);
  });
}
