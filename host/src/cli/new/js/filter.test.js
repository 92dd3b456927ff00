import assert from "node:assert/strict";
import { test } from "node:test";

import { keeps } from "./rules.js";

test("keeps topics under the prefix and everything without one", () => {
  assert.ok(keeps("orders.eu", "orders."));
  assert.ok(!keeps("billing.eu", "orders."));
  assert.ok(keeps("billing.eu", undefined));
});
