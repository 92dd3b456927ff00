/** The stamp for a plugin configured with `configured`. */
export function stamp(configured) {
  return configured ?? "{{name}}";
}
