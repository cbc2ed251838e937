#!/usr/bin/env bash
# Builds cadence-sql-tool at the pinned version into
# ${XDG_CACHE_HOME:-$HOME/.cache}/final-problem/cadence-<version>/bin, once (install stamp).
# The schema files it applies come with the module source in Go's module cache; their
# directory is written to <cache>/schema-dir so the tests find it without asking Go again.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="$(sed -n 's/^require github.com\/uber\/cadence \(v[0-9.]*\)$/\1/p' "$here/go.mod")"
test -n "$version" || { echo "no github.com/uber/cadence version in $here/go.mod" >&2; exit 1; }
cache="${XDG_CACHE_HOME:-$HOME/.cache}/final-problem/cadence-${version}"
stamp="$cache/.installed"
if [ -f "$stamp" ]; then exit 0; fi
echo "==> cadence-sql-tool $version (go build, a few minutes cold) into $cache"
mkdir -p "$cache/bin"
cd "$here"
nice go build -trimpath -o "$cache/bin/cadence-sql-tool" ./cmd/cadence-sql-tool
go list -m -f '{{.Dir}}' github.com/uber/cadence | sed 's|$|/schema/postgres|' > "$cache/schema-dir"
test -d "$(cat "$cache/schema-dir")/cadence/versioned"
touch "$stamp"
