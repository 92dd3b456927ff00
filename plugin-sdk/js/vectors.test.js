// The codec against the golden vectors (`plugin-sdk/wire/vectors/`): every
// `NAME.bin` decodes to the messages of `NAME.json`, and those encode to
// exactly `NAME.bin`. Run: `node --test plugin-sdk/js/vectors.test.js`.

import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { test } from "node:test";

import { Message, decode, encode } from "./wire.js";

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
