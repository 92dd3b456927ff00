// Staging a plugin for componentize-js (`stage.mjs`): the SDK is staged in a
// directory of its own, so a plugin's `wire.js` or `switchyard_plugin.js` is
// its own module, not the SDK's, and only imports of "switchyard-plugin" are
// rewritten, not every string spelling it. The staged plugin is imported and
// run here, in Node (the host import stubbed, `testing/`), as componentize-js
// would resolve it. Run: `node --test plugin-sdk/js/componentize.test.js`.

import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { register } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";

register("./testing/hooks.mjs", import.meta.url);
const { stagePlugin } = await import("./stage.mjs");
const { Message, decode, encode } = await import("./wire.js");

const plugin = {
  "app.js": `
    import { transformPlugin } from "switchyard-plugin";
    import { config } from './helpers.js';
    import { stamp } from "./wire.js";
    import { suffix } from "./switchyard_plugin.js";
    // A string that spells the package is data, not an import.
    export const name = "switchyard-plugin";
    export const { transform, format } = transformPlugin((message, out) => {
      out.emit(message).withHeader("x-stamp", stamp + suffix + (config("k") ?? "-")).withTopic(name).finish();
    });
  `,
  "helpers.js": `export { config } from 'switchyard-plugin';\n`,
  "wire.js": `export const stamp = "the plugin's wire.js";\n`,
  "switchyard_plugin.js": `export const suffix = ", its switchyard_plugin.js";\n`,
  "app.test.js": `throw new Error("a test module is not staged");\n`,
};

test("a plugin's modules named like the SDK's are its own, and only imports of the SDK are rewritten", async (t) => {
  const root = await mkdtemp(join(tmpdir(), "switchyard-stage-test-"));
  t.after(() => rm(root, { recursive: true, force: true }));
  const [app, stage] = [join(root, "app"), join(root, "stage")];
  await mkdir(app);
  await mkdir(stage);
  for (const [file, source] of Object.entries(plugin)) await writeFile(join(app, file), source);

  const sourcePath = await stagePlugin(join(app, "app.js"), stage);
  assert.equal(sourcePath, join(stage, "app.js"));
  const files = ["app.js", "helpers.js", "switchyard-plugin", "switchyard_plugin.js", "wire.js"];
  assert.deepStrictEqual((await readdir(stage)).sort(), files);

  const staged = await import(pathToFileURL(sourcePath).href);
  assert.equal(staged.name, "switchyard-plugin");
  const { messages, errors } = staged.transform.transform(encode([new Message({ id: 1n, topic: "in" })]));
  assert.deepStrictEqual(errors, []);
  const [output] = decode(messages);
  assert.equal(output.topic, "switchyard-plugin");
  assert.equal(output.header("x-stamp"), "the plugin's wire.js, its switchyard_plugin.js-");
});

// A plugin split into directories, with a `.mjs` main module, beside its dependencies and tests.
const tree = {
  "main.mjs": `
    import { transformPlugin } from "switchyard-plugin";
    import { stamp } from "./lib/stamp.js";
    export const { transform, format } = transformPlugin((message, out) => {
      out.emit(message).withHeader("x-stamp", stamp()).finish();
    });
  `,
  "lib/stamp.js": `
    import { config } from "switchyard-plugin";
    import { suffix } from "./deep/suffix.mjs";
    export const stamp = () => "lib" + suffix + (config("k") ?? "-");
  `,
  "lib/deep/suffix.mjs": `export const suffix = ", deep";\n`,
  "lib/stamp.test.js": `throw new Error("a test module is not staged");\n`,
  "tests/main.test.mjs": `throw new Error("a test module is not staged");\n`,
  "node_modules/dependency/index.js": `throw new Error("a dependency is not staged");\n`,
};

test("a plugin's modules in directories under its main one, .mjs ones too, are staged, its dependencies and tests not", async (t) => {
  const root = await mkdtemp(join(tmpdir(), "switchyard-stage-test-"));
  t.after(() => rm(root, { recursive: true, force: true }));
  const [app, stage] = [join(root, "app"), join(root, "stage")];
  await mkdir(stage);
  for (const [file, source] of Object.entries(tree)) {
    await mkdir(dirname(join(app, file)), { recursive: true });
    await writeFile(join(app, file), source);
  }

  const sourcePath = await stagePlugin(join(app, "main.mjs"), stage);
  assert.equal(sourcePath, join(stage, "main.mjs"));
  const files = ["lib", "lib/deep", "lib/deep/suffix.mjs", "lib/stamp.js", "main.mjs", "switchyard-plugin"];
  const sdk = ["switchyard-plugin/switchyard_plugin.js", "switchyard-plugin/wire.js"];
  assert.deepStrictEqual((await readdir(stage, { recursive: true })).sort(), [...files, ...sdk].sort());

  const staged = await import(pathToFileURL(sourcePath).href);
  const { messages, errors } = staged.transform.transform(encode([new Message({ id: 1n, topic: "in" })]));
  assert.deepStrictEqual(errors, []);
  assert.equal(decode(messages)[0].header("x-stamp"), "lib, deep-");

  // A directory of the plugin's where the SDK is staged would mix the two: refused.
  await mkdir(join(app, "switchyard-plugin"));
  await writeFile(join(app, "switchyard-plugin", "own.js"), "export const own = 1;\n");
  const again = join(root, "again");
  await mkdir(again);
  await assert.rejects(stagePlugin(join(app, "main.mjs"), again), /switchyard-plugin\/ is where the SDK is staged/);
});
