#!/usr/bin/env bash
# Runs one of the README's plugin tutorials, step by step, in an empty
# directory: every ```bash block after a `<!-- tutorial -->` line (Rust, the
# default) or a `<!-- tutorial LANG -->` line (`tutorial.sh python`,
# `tutorial.sh js`), in order, in one shell.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
marker="<!-- tutorial${1:+ $1} -->"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
script=$(awk -v marker="$marker" '$0 == marker {armed=1; next}
              armed && /^```bash/ {inside=1; next}
              inside && /^```/ {inside=0; armed=0; next}
              inside {print}' "$repo/README.md")
[ -n "$script" ] || { echo "tutorial.sh: no steps marked $marker in README.md" >&2; exit 1; }
cd "$work"
export SWITCHYARD_REPO="$repo"
status=0
bash -euo pipefail -c "$script" > "$work/tutorial.log" 2>&1 || status=$?
cat "$work/tutorial.log"
[ "$status" -eq 0 ] || { echo "tutorial.sh: a tutorial step failed ($status)" >&2; exit 1; }
# The message as the `log` destination delivered it, as README says: payload shouted, header `x-shouted: yes`.
grep -F '"payload":"HELLO, SWITCHYARD"' "$work/tutorial.log" | grep -F '["x-shouted","yes"]' > /dev/null ||
    { echo "tutorial.sh: no shouted message with the header x-shouted: yes was delivered" >&2; exit 1; }
echo "tutorial.sh: the README tutorial${1:+ in $1} works"
