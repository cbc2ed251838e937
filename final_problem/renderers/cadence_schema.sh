#!/bin/sh
# Cadence schema management on PostgreSQL with cadence-sql-tool, safe to run any number of times.
#
#   cadence-schema.sh setup   wait for the server; for the default and the visibility
#                             database: create it when absent, install the versioning tables
#                             when absent, apply every pending versioned upgrade (none: no-op)
#   cadence-schema.sh wait    return once both databases are at the newest version in
#                             SCHEMA_DIR (server pods wait on it instead of crash-looping)
#
# Environment: SQL_HOST, SQL_PORT, SQL_USER, SQL_PASSWORD (read by cadence-sql-tool itself, so
# the password never appears in a process list), CADENCE_DB, VISIBILITY_DB, SCHEMA_DIR (the
# tool's postgres schema folder: SCHEMA_DIR/cadence/versioned, SCHEMA_DIR/visibility/versioned),
# WAIT_TIMEOUT_S (default 600), SQL_TOOL (default cadence-sql-tool).
#
# cadence-sql-tool has no "is it there" command, so its errors are told apart by PostgreSQL's
# own wording: 'database "x" already exists' (SQLSTATE 42P04) and 'relation "schema_version"
# already exists' (42P07). setup-schema creates the versioning tables before it writes a
# version, so on an existing database it fails before touching the recorded version.
set -eu

mode="${1:-setup}"
tool="${SQL_TOOL:-cadence-sql-tool}"
: "${SQL_HOST:?}" "${SQL_PORT:?}" "${SQL_USER:?}" "${SQL_PASSWORD:?}"
: "${CADENCE_DB:?}" "${VISIBILITY_DB:?}" "${SCHEMA_DIR:?}"
deadline=$(( $(date +%s) + ${WAIT_TIMEOUT_S:-600} ))
export SQL_HOST SQL_PORT SQL_USER SQL_PASSWORD

log() { echo "cadence-schema: $*" >&2; }

out_of_time() { [ "$(date +%s)" -ge "$deadline" ]; }

sql_tool() { "$tool" --plugin postgres "$@" 2>&1; }

# create-database connects without a database: it answers once the server takes logins.
create_database() {
  db="$1"
  while :; do
    if out="$(sql_tool create-database --db "$db")"; then
      log "created database $db"
      return 0
    fi
    case "$out" in
      *"already exists"*) log "database $db exists"; return 0 ;;
    esac
    if out_of_time; then log "database server not reachable: $out"; return 1; fi
    sleep 2
  done
}

setup_versioning() {
  db="$1"
  if out="$(sql_tool --db "$db" setup-schema -v 0.0)"; then
    log "$db: versioning tables created at 0.0"
    return 0
  fi
  case "$out" in
    *"already exists"*) log "$db: versioning tables exist"; return 0 ;;
  esac
  log "$db: setup-schema failed: $out"
  return 1
}

update() {
  db="$1" dir="$2"
  if out="$(sql_tool --db "$db" update-schema -d "$dir")"; then
    case "$out" in
      *"found zero updates"*) log "$db: current, nothing to do" ;;
      *) log "$db: upgraded: $(echo "$out" | grep -o 'Schema updated from [^,]*' | tr '\n' ';')" ;;
    esac
    return 0
  fi
  log "$db: update-schema failed: $out"
  return 1
}

is_current() {
  db="$1" dir="$2"
  out="$(sql_tool --db "$db" update-schema --dryrun -d "$dir")" || return 1
  case "$out" in *"Found zero updates to run"*) return 0 ;; esac
  return 1
}

case "$mode" in
  setup)
    for pair in "$CADENCE_DB:cadence" "$VISIBILITY_DB:visibility"; do
      db="${pair%%:*}" kind="${pair#*:}"
      create_database "$db"
      setup_versioning "$db"
      update "$db" "$SCHEMA_DIR/$kind/versioned"
    done
    log "schema current"
    ;;
  wait)
    for pair in "$CADENCE_DB:cadence" "$VISIBILITY_DB:visibility"; do
      db="${pair%%:*}" kind="${pair#*:}"
      until is_current "$db" "$SCHEMA_DIR/$kind/versioned"; do
        if out_of_time; then log "$db: schema not current after ${WAIT_TIMEOUT_S:-600} s"; exit 1; fi
        log "$db: waiting for the schema Job"
        sleep 5
      done
    done
    log "schema current"
    ;;
  *)
    log "unknown mode $mode (use setup or wait)"
    exit 2
    ;;
esac
