// Stage a JavaScript plugin for componentize-js (`componentize.mjs`): the
// plugin's modules and the SDK copied into one directory that componentize-js
// resolves relative imports in. Apart from the build, so that it is tested
// under plain `node` (`componentize.test.js`).

import { copyFile, mkdir, readFile, readdir, writeFile } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const sdk = dirname(fileURLToPath(import.meta.url));

/**
 * The directory of the stage that the SDK's modules go to. A plugin's modules (only its `*.js` files are
 * staged) sit beside it, so none can take the place of the SDK's: staged side by side, a plugin's own
 * `wire.js` or `switchyard_plugin.js` overwrote the SDK's.
 */
const SDK_DIR = "switchyard-plugin";

/**
 * An import of the SDK: `from "switchyard-plugin"`, `import "switchyard-plugin"` or
 * `import("switchyard-plugin")`, either quote. Only these are rewritten: any string literal spelling the
 * name once was, changing a plugin's data.
 */
const SDK_IMPORT = /(\bfrom\s*|\bimport\s*(?:\(\s*)?)(["'])switchyard-plugin\2/g;

/**
 * Stage the plugin whose main module is `app` in the directory `stage`: `app` and the modules beside it
 * (`*.test.js` aside) with their imports of "switchyard-plugin" pointed at the SDK, staged in `SDK_DIR`.
 * Returns the path of the staged main module.
 */
export async function stagePlugin(app, stage) {
  await mkdir(join(stage, SDK_DIR));
  for (const file of ["wire.js", "switchyard_plugin.js"]) await copyFile(join(sdk, file), join(stage, SDK_DIR, file));
  const appDir = dirname(resolve(app));
  const modules = (await readdir(appDir)).filter((file) => file.endsWith(".js") && !file.endsWith(".test.js"));
  for (const file of modules) {
    const source = await readFile(join(appDir, file), "utf8");
    await writeFile(join(stage, file), source.replaceAll(SDK_IMPORT, `$1"./${SDK_DIR}/switchyard_plugin.js"`));
  }
  return join(stage, basename(app));
}
