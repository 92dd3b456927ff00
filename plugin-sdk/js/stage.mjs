// Stage a JavaScript plugin for componentize-js (`componentize.mjs`): the
// plugin's modules and the SDK copied into one directory that componentize-js
// resolves relative imports in. Apart from the build, so that it is tested
// under plain `node` (`componentize.test.js`).

import { copyFile, mkdir, readFile, readdir, writeFile } from "node:fs/promises";
import { basename, dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const sdk = dirname(fileURLToPath(import.meta.url));

/**
 * The directory of the stage that the SDK's modules go to. A plugin's modules sit beside it, so none can
 * take the place of the SDK's: staged side by side, a plugin's own `wire.js` or `switchyard_plugin.js`
 * overwrote the SDK's.
 */
const SDK_DIR = "switchyard-plugin";

/** Directories of a plugin's tree that are not its modules: its dependencies and its tests. */
const NOT_STAGED = new Set(["node_modules", "test", "tests"]);

/**
 * An import of the SDK: `from "switchyard-plugin"`, `import "switchyard-plugin"` or
 * `import("switchyard-plugin")`, either quote. Only these are rewritten: any string literal spelling the
 * name once was, changing a plugin's data.
 */
const SDK_IMPORT = /(\bfrom\s*|\bimport\s*(?:\(\s*)?)(["'])switchyard-plugin\2/g;

/**
 * Stage the plugin whose main module is `app` in the directory `stage`: `app` and the modules (`*.js`,
 * `*.mjs`) in its directory and the directories under it (tests, dependencies and hidden ones aside), at
 * the same paths, with their imports of "switchyard-plugin" pointed at the SDK, staged in `SDK_DIR`.
 * Returns the path of the staged main module.
 */
export async function stagePlugin(app, stage) {
  await mkdir(join(stage, SDK_DIR));
  for (const file of ["wire.js", "switchyard_plugin.js"]) await copyFile(join(sdk, file), join(stage, SDK_DIR, file));
  const appDir = dirname(resolve(app));
  for (const file of await modulesUnder(appDir)) {
    if (file.split(sep)[0] === SDK_DIR) {
      throw new Error(`${join(appDir, file)}: ${SDK_DIR}/ is where the SDK is staged: rename the directory`);
    }
    // The SDK as an import from where the module is staged: "./switchyard-plugin/…", "../switchyard-plugin/…".
    const sdkModule = relative(dirname(join(stage, file)), join(stage, SDK_DIR, "switchyard_plugin.js"));
    const sdkPath = sdkModule.split(sep).join("/");
    const sdkImport = sdkPath.startsWith("../") ? sdkPath : `./${sdkPath}`;
    const source = await readFile(join(appDir, file), "utf8");
    await mkdir(dirname(join(stage, file)), { recursive: true });
    await writeFile(join(stage, file), source.replaceAll(SDK_IMPORT, `$1"${sdkImport}"`));
  }
  return join(stage, basename(app));
}

/** The paths, relative to `root`, of the modules a plugin in `root` is made of. */
async function modulesUnder(root, dir = "") {
  const modules = [];
  for (const entry of await readdir(join(root, dir), { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.name.startsWith(".")) continue;
    if (entry.isDirectory() && !NOT_STAGED.has(entry.name)) modules.push(...(await modulesUnder(root, path)));
    if (entry.isFile() && /\.m?js$/.test(entry.name) && !/\.test\.m?js$/.test(entry.name)) modules.push(path);
  }
  return modules;
}
