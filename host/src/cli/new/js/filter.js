// {{name}}: a Switchyard filter plugin.
//
// Config key `topic_prefix`: keep only messages whose topic starts with it
// (unset: keep everything). Counters: `kept`, `dropped`.

import { Verdict, config, count, filterPlugin } from "switchyard-plugin";

import { keeps } from "./rules.js";

export const { filter, format } = filterPlugin((message) => {
  if (keeps(message.topic, config("topic_prefix"))) {
    count("kept");
    return Verdict.KEEP;
  }
  count("dropped");
  return Verdict.DROP;
});
