// A filter that keeps messages by topic prefix and by header: the same
// decisions as the Rust `header-filter`, written in JavaScript.
//
// Config keys (all optional; an unset key imposes nothing):
// - `topic_prefix`: keep only messages whose topic starts with it.
// - `require_header`: keep only messages carrying this header (name compared
//   ASCII case-insensitively).
// - `require_value`: ...and only when that header has exactly this value.
//   Setting it without `require_header` fails every message.
//
// Counters: `kept`, `dropped`.

import { Failed, Verdict, config, count, filterPlugin } from "switchyard-plugin";

let settings;

function keeps(message) {
  // Read from the host once per instance (not at build time: no host then).
  settings ??= {
    topicPrefix: config("topic_prefix"),
    requireHeader: config("require_header"),
    requireValue: config("require_value"),
  };
  const { topicPrefix, requireHeader, requireValue } = settings;
  if (topicPrefix != null && !message.topic.startsWith(topicPrefix)) return false;
  if (requireHeader == null) {
    if (requireValue != null) throw new Failed("config key `require_value` needs `require_header`");
    return true;
  }
  const value = message.header(requireHeader);
  return value != null && (requireValue == null || value === requireValue);
}

export const { filter, format } = filterPlugin((message) => {
  if (keeps(message)) {
    count("kept", 1);
    return Verdict.KEEP;
  }
  count("dropped", 1);
  return Verdict.DROP;
});
