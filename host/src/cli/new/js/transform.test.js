import assert from "node:assert/strict";
import { test } from "node:test";

import { stamp } from "./rules.js";

test("the stamp is the configured one or the plugin name", () => {
  assert.equal(stamp("v2"), "v2");
  assert.equal(stamp(undefined), "{{name}}");
});
