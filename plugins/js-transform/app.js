// A transform that stamps every message with the header `x-stamp` and leaves
// the rest alone: the same outputs as the Rust `stamp-transform`, written in
// JavaScript.
//
// Config key: `stamp`, the header's value (default `js-transform`).

import { config, transformPlugin } from "switchyard-plugin";

let stamp;

export const { transform, format } = transformPlugin((message, out) => {
  // Read from the host once per instance (not at build time: no host then).
  stamp ??= config("stamp") ?? "js-transform";
  out.emit(message).withHeader("x-stamp", stamp).finish();
});
