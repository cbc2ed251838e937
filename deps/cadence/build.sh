#!/usr/bin/env bash
# Builds cadence-server (cmd/cadence-server: this folder's launcher over the module's
# packages), cadence-sql-tool and the cadence CLI at the pinned version into
# ${XDG_CACHE_HOME:-$HOME/.cache}/final-problem/cadence-<version>/bin, once (install stamp).
# The schema files it applies come with the module source in Go's module cache (the same
# files the server image ships under /etc/cadence/schema); they are copied to
# <cache>/schema/postgres so a cleaned module cache does not lose them.
#
#   build.sh [MODULE_DIR]   another folder of the same shape (its go.mod, one cmd/<name>/ per
#                           binary), e.g. deps/cadence-previous: the previous minor's server
#                           for the upgrade rehearsal, into cadence-<its version>/. Both
#                           builds share Go's module and build caches.
set -euo pipefail
here="$(cd "${1:-$(dirname "$0")}" && pwd)"
version="$(sed -En 's/^(require)?[[:space:]]*github\.com\/uber\/cadence (v[0-9.]+)$/\2/p' "$here/go.mod")"
test -n "$version" || { echo "no github.com/uber/cadence version in $here/go.mod" >&2; exit 1; }
cache="${XDG_CACHE_HOME:-$HOME/.cache}/final-problem/cadence-${version}"
stamp="$cache/.installed"
mkdir -p "$cache"
# One build at a time (make and a test may start this together).
exec 9>"$cache/.lock"
flock 9
# One binary per cmd/<name>/ folder of the module directory.
binaries="$(find "$here/cmd" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | LC_ALL=C sort | xargs)"
# A binary is rebuilt when it is missing or its source changed: each records the digest of
# go.mod, go.sum and its own cmd/<name>/ folder it was built from.
source_digest() {
  (cd "$here" && { cat go.mod go.sum; find "cmd/$1" -type f -print0 | LC_ALL=C sort -z | xargs -0 cat; }) \
    | sha256sum | cut -d' ' -f1
}
missing=""
for b in $binaries; do
  if [ ! -x "$cache/bin/$b" ] || [ "$(cat "$cache/bin/.$b.sha256" 2>/dev/null)" != "$(source_digest "$b")" ]; then
    missing="$missing $b"
  fi
done
if [ -f "$stamp" ] && [ -z "$missing" ]; then exit 0; fi
echo "==> Cadence $version tools:${missing:- schema files} (go build, about 15 minutes cold each, shared packages once) into $cache"
mkdir -p "$cache/bin"
cd "$here"
for b in $missing; do
  nice go build -trimpath -o "$cache/bin/$b" "./cmd/$b"
  source_digest "$b" > "$cache/bin/.$b.sha256"
done
src="$(go list -m -f '{{.Dir}}' github.com/uber/cadence)/schema/postgres"
rm -rf "$cache/schema"
mkdir -p "$cache/schema"
cp -R "$src" "$cache/schema/postgres"
chmod -R u+w "$cache/schema"
test -d "$cache/schema/postgres/cadence/versioned"
test -d "$cache/schema/postgres/visibility/versioned"
touch "$stamp"
