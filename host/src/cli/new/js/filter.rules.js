/** Whether a message on `topic` passes a filter configured with `prefix`. */
export function keeps(topic, prefix) {
  return prefix === undefined || topic.startsWith(prefix);
}
