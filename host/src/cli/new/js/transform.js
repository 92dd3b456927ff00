// {{name}}: a Switchyard transform plugin.
//
// Stamps every message with the header `x-stamp`, whose value is the config
// key `stamp` (default `{{name}}`); the rest passes unchanged.

import { config, transformPlugin } from "switchyard-plugin";

import { stamp } from "./rules.js";

export const { transform, format } = transformPlugin((message, out) => {
  out.emit(message).withHeader("x-stamp", stamp(config("stamp"))).finish();
});
