// The host import as the SDK's own tests see it (`hooks.mjs`). A filter's
// counts travel in its answer, so a `count` call here is a defect; `log`
// calls are kept in `logged`, as `[level, message]`, for the tests to read.

export function count(name, delta) {
  throw new Error(`host.count(${name}, ${delta}) was called: a filter's counts belong in its answer`);
}

export const logged = [];

export function log(level, message) {
  logged.push([level, message]);
}

export function config() {
  return undefined;
}

export function nowMillis() {
  return 0n;
}
