// A Node module hook for the SDK's own tests: the host import that a
// component gets from Switchyard resolves to `host.js` here, so the SDK
// runs in Node. Registered by the tests with `module.register`.

const HOST = "switchyard:plugin/host@0.1.0";

export async function resolve(specifier, context, next) {
  if (specifier === HOST) {
    return { url: new URL("./host.js", import.meta.url).href, shortCircuit: true };
  }
  return next(specifier, context);
}
