// The host import as the SDK's own tests see it (`hooks.mjs`). A filter's
// counts travel in its answer, so a `count` call here is a defect.

export function count(name, delta) {
  throw new Error(`host.count(${name}, ${delta}) was called: a filter's counts belong in its answer`);
}

export function log() {}

export function config() {
  return undefined;
}

export function nowMillis() {
  return 0n;
}
