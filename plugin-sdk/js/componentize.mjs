#!/usr/bin/env node
// Build a JavaScript plugin into a WASM component with componentize-js:
//
//     node plugin-sdk/js/componentize.mjs --wit wit --world transform-plugin app.js -o plugin.wasm
//
// The plugin is APP.js and the modules in its directory tree (tests and
// node_modules aside, see `stage.mjs`); they
// import the SDK as "switchyard-plugin". They and the SDK are staged in a
// temporary directory (`stage.mjs`: the SDK in a directory of its own, the
// imports rewritten to the relative path componentize-js resolves), then
// componentized with the HTTP features left out.

import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { stagePlugin } from "./stage.mjs";

const sdk = dirname(fileURLToPath(import.meta.url));

let componentize;
try {
  ({ componentize } = await import("@bytecodealliance/componentize-js"));
} catch (error) {
  console.error(`componentize-js cannot be loaded (${error.message}): run \`npm ci --prefix ${sdk}\``);
  process.exit(2);
}

const { values, positionals } = parseArgs({
  options: { wit: { type: "string" }, world: { type: "string" }, output: { type: "string", short: "o" } },
  allowPositionals: true,
});
if (!values.wit || !values.world || !values.output || positionals.length !== 1) {
  console.error("usage: componentize.mjs --wit DIR --world WORLD APP.js -o OUT.wasm");
  process.exit(2);
}

const stage = await mkdtemp(join(tmpdir(), "switchyard-js-"));
try {
  const sourcePath = await stagePlugin(positionals[0], stage);
  const { component } = await componentize({
    sourcePath,
    witPath: resolve(values.wit),
    worldName: values.world,
    disableFeatures: ["http", "fetch-event"],
  });
  await writeFile(values.output, component);
} finally {
  await rm(stage, { recursive: true, force: true });
}
