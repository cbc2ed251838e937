"""Render Redis and Sentinel configuration, and the scripts that start them.

One module for the chart and for every other place the same servers run (the
integration tests and the benchmark start them on one host with ports and paths
remapped), so what is tested is what is deployed.

What is rendered here never contains a secret. Passwords reach the servers at start:
:data:`START_REDIS` and :data:`START_SENTINEL` read them from the environment (a
Kubernetes ``secretKeyRef``) and write the runtime configuration into a private,
writable directory (a memory-backed ``emptyDir`` in the chart). Sentinel must be able to
rewrite that file (it stores the current primary and its peers there), and Redis rewrites
its own on ``REPLICAOF`` + ``CONFIG REWRITE`` from Sentinel.

Every directive rendered is understood by Redis 7.0 (Debian 12, the integration tests)
and by the pinned image (:data:`final_problem.versions.REDIS_IMAGE`).
Sources: Redis docs, "Redis configuration" (the self-documented redis.conf of 7.0),
"High availability with Redis Sentinel", "ACL", "Redis persistence", "Redis replication".
"""

from __future__ import annotations

from dataclasses import dataclass

#: Eviction policies Redis 7.0 accepts (redis.conf, MEMORY MANAGEMENT section).
MAXMEMORY_POLICIES = (
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
)

#: ACL user of replication, Sentinel, probes and operators: every command.
ADMIN_USER = "admin"
#: ACL user of applications: every key and command except the ``@dangerous`` category
#: (FLUSHALL, FLUSHDB, KEYS, CONFIG, DEBUG, SHUTDOWN, REPLICAOF, MONITOR, ...; the
#: category list is ``ACL CAT dangerous``).
APP_USER = "app"
APP_PERMISSIONS = "~* &* +@all -@dangerous"
#: ACL user of probes and the metrics sidecar: PING and INFO, no keys.
METRICS_USER = "metrics"
METRICS_PERMISSIONS = "-@all +ping +info"


@dataclass(frozen=True, kw_only=True)
class RedisConfigOptions:
    """Everything the rendered files depend on; the chart fills it from its props.

    Ports, addresses and paths are parameters so one host can run several servers.
    """

    #: Sentinel's name for the replicated set, used by clients to find the primary.
    master_name: str = "platform"
    port: int = 6379
    sentinel_port: int = 26379
    #: Addresses to listen on. ``* -::*``: every IPv4 address and, if present, IPv6
    #: (a pod has one interface; the NetworkPolicy decides who reaches it).
    bind: str = "* -::*"
    #: Data directory (the persistent volume): the AOF and RDB files.
    data_dir: str = "/data"
    maxmemory_mib: int = 1024
    maxmemory_policy: str = "volatile-lru"
    quorum: int = 2
    down_after_ms: int = 5000
    failover_timeout_ms: int = 60000
    #: Replicas resynchronised at once after a failover; 1 keeps the others serving reads.
    parallel_syncs: int = 1


def redis_conf(options: RedisConfigOptions) -> str:
    """The static part of redis.conf: network, persistence, memory, replication."""
    o = options
    lines = [
        "# Rendered by final_problem.renderers.redis; users, passwords, the announced",
        "# address and replicaof are appended at start by start-redis.sh.",
        f"port {o.port}",
        f"bind {o.bind}",
        "protected-mode yes",
        "daemonize no",
        'logfile ""',
        f"dir {o.data_dir}",
        # Persistence: an append-only file fsynced every second loses at most about one
        # second of writes on a crash (Redis docs, "Redis persistence", AOF).
        "appendonly yes",
        "appendfsync everysec",
        'appendfilename "appendonly.aof"',
        # RDB snapshots as well: a compact backup and a fast restart; the thresholds are
        # the defaults of Redis 7.0's redis.conf.
        "save 3600 1 300 100 60 10000",
        f"maxmemory {o.maxmemory_mib}mb",
        f"maxmemory-policy {o.maxmemory_policy}",
        "replica-read-only yes",
        # A replica that lost its primary still answers reads (stale) instead of errors,
        # so reads stay available during a failover.
        "replica-serve-stale-data yes",
        "repl-diskless-sync yes",
        "tcp-keepalive 300",
        # No DEBUG or MODULE commands for anyone, whatever the ACL (Redis 7.0+).
        "enable-debug-command no",
        "enable-module-command no",
    ]
    return "\n".join(lines) + "\n"


def sentinel_conf(options: RedisConfigOptions) -> str:
    """The static global part of sentinel.conf."""
    o = options
    lines = [
        "# Rendered by final_problem.renderers.redis; the announced address, the",
        "# monitored primary and passwords are appended at start by start-sentinel.sh.",
        f"port {o.sentinel_port}",
        f"bind {o.bind}",
        "protected-mode no",
        "daemonize no",
        'logfile ""',
        # Pods change addresses when they move: Sentinels announce and accept stable DNS
        # names (Redis 6.2+; docs, "Sentinel, Docker, NAT, and possible issues" and
        # "IP Addresses and DNS names").
        "sentinel resolve-hostnames yes",
        "sentinel announce-hostnames yes",
    ]
    return "\n".join(lines) + "\n"


def sentinel_master_conf(options: RedisConfigOptions) -> str:
    """Per-primary Sentinel settings; they must follow the ``sentinel monitor`` line."""
    o = options
    name = o.master_name
    lines = [
        f"sentinel down-after-milliseconds {name} {o.down_after_ms}",
        f"sentinel failover-timeout {name} {o.failover_timeout_ms}",
        f"sentinel parallel-syncs {name} {o.parallel_syncs}",
        f"sentinel auth-user {name} {ADMIN_USER}",
    ]
    return "\n".join(lines) + "\n"


# The scripts are POSIX sh: the official image and Debian both run them with /bin/sh.
# Inputs (environment):
#   REDIS_CONFIG_DIR   read-only files rendered above (redis.conf, sentinel.conf, ...)
#   REDIS_RUNTIME_DIR  private writable directory for the runtime configuration
#   REDIS_PORT, SENTINEL_PORT, REDIS_MASTER_NAME, SENTINEL_QUORUM
#   REDIS_ANNOUNCE_HOST   this member's stable name (its pod DNS name)
#   REDIS_PRIMARY_FALLBACK  host:port of the first member: the primary on first boot only
#   REDIS_SENTINELS    space-separated host:port of every Sentinel
#   REDIS_ADMIN_PASSWORD, REDIS_APP_PASSWORD, REDIS_METRICS_PASSWORD,
#   REDIS_SENTINEL_PASSWORD (secretKeyRef)
#   REDIS_SERVER       the redis-server binary (default: redis-server on PATH)

#: Shared shell functions: ask the Sentinels which member is the primary now.
LIB_SH = r"""# Sourced by start-redis.sh and start-sentinel.sh.
set -eu

require() {
  for name in "$@"; do
    eval "value=\${$name:-}"
    if [ -z "$value" ]; then
      echo "missing environment variable $name" >&2
      exit 1
    fi
  done
}

# Print "host port" of the primary as the first Sentinel that answers sees it; print
# nothing when none answers (first boot: no Sentinel runs yet).
current_primary() {
  for addr in $REDIS_SENTINELS; do
    host=${addr%:*}
    port=${addr##*:}
    if [ "$host:$port" = "${SELF_SENTINEL:-}" ]; then
      continue
    fi
    answer=$(REDISCLI_AUTH="$REDIS_SENTINEL_PASSWORD" timeout 3 \
      redis-cli --no-auth-warning --raw -h "$host" -p "$port" \
      SENTINEL get-master-addr-by-name "$REDIS_MASTER_NAME" 2>/dev/null | tr '\n' ' ') || continue
    set -- $answer
    if [ "$#" -eq 2 ] && [ -n "$1" ] && [ "$2" -gt 0 ] 2>/dev/null; then
      echo "$1 $2"
      return 0
    fi
  done
  return 0
}

fallback_primary() {
  echo "${REDIS_PRIMARY_FALLBACK%:*} ${REDIS_PRIMARY_FALLBACK##*:}"
}
"""

#: Start one Redis member: primary or replica of the primary the Sentinels know.
START_REDIS = r"""#!/bin/sh
# Start a Redis member. A member that restarts rejoins the primary the Sentinels report,
# not the member that was primary at first deploy; only when no Sentinel answers (first
# boot) is the first member the primary.
. "$REDIS_CONFIG_DIR/lib.sh"
require REDIS_CONFIG_DIR REDIS_RUNTIME_DIR REDIS_PORT REDIS_ANNOUNCE_HOST REDIS_PRIMARY_FALLBACK \
  REDIS_SENTINELS REDIS_MASTER_NAME REDIS_ADMIN_PASSWORD REDIS_APP_PASSWORD REDIS_SENTINEL_PASSWORD \
  REDIS_METRICS_PASSWORD

primary=$(current_primary)
source="sentinel"
if [ -z "$primary" ]; then
  primary=$(fallback_primary)
  source="first boot, no Sentinel answered"
fi
set -- $primary
primary_host=$1
primary_port=$2

umask 077
conf="$REDIS_RUNTIME_DIR/redis.conf"
{
  cat "$REDIS_CONFIG_DIR/redis.conf"
  echo "replica-announce-ip $REDIS_ANNOUNCE_HOST"
  echo "replica-announce-port $REDIS_PORT"
  echo "masteruser admin"
  echo "masterauth $REDIS_ADMIN_PASSWORD"
  echo "user default off resetpass -@all"
  echo "user admin on >$REDIS_ADMIN_PASSWORD ~* &* +@all"
  echo "user app on >$REDIS_APP_PASSWORD __APP_PERMISSIONS__"
  echo "user metrics on >$REDIS_METRICS_PASSWORD __METRICS_PERMISSIONS__"
  if [ "$primary_host" = "$REDIS_ANNOUNCE_HOST" ] && [ "$primary_port" = "$REDIS_PORT" ]; then
    echo "starting as primary ($source)" >&2
  else
    echo "starting as replica of $primary_host:$primary_port ($source)" >&2
    echo "replicaof $primary_host $primary_port"
  fi
} > "$conf.tmp"
mv "$conf.tmp" "$conf"
exec "${REDIS_SERVER:-redis-server}" "$conf"
""".replace("__APP_PERMISSIONS__", APP_PERMISSIONS).replace(
    "__METRICS_PERMISSIONS__", METRICS_PERMISSIONS
)

#: Start one Sentinel monitoring the primary the other Sentinels know.
START_SENTINEL = r"""#!/bin/sh
# Start a Sentinel. It monitors the primary its peers report; on first boot (no peer
# answers) the first Redis member. Its configuration lives in a writable directory
# because Sentinel rewrites it with what it learns.
. "$REDIS_CONFIG_DIR/lib.sh"
require REDIS_CONFIG_DIR REDIS_RUNTIME_DIR SENTINEL_PORT SENTINEL_QUORUM REDIS_ANNOUNCE_HOST \
  REDIS_PRIMARY_FALLBACK REDIS_SENTINELS REDIS_MASTER_NAME REDIS_ADMIN_PASSWORD REDIS_SENTINEL_PASSWORD
SELF_SENTINEL="$REDIS_ANNOUNCE_HOST:$SENTINEL_PORT"

primary=$(current_primary)
if [ -z "$primary" ]; then
  primary=$(fallback_primary)
fi
set -- $primary

umask 077
conf="$REDIS_RUNTIME_DIR/sentinel.conf"
{
  cat "$REDIS_CONFIG_DIR/sentinel.conf"
  echo "dir $REDIS_RUNTIME_DIR"
  echo "sentinel announce-ip $REDIS_ANNOUNCE_HOST"
  echo "sentinel announce-port $SENTINEL_PORT"
  echo "requirepass $REDIS_SENTINEL_PASSWORD"
  echo "sentinel sentinel-pass $REDIS_SENTINEL_PASSWORD"
  echo "sentinel monitor $REDIS_MASTER_NAME $1 $2 $SENTINEL_QUORUM"
  cat "$REDIS_CONFIG_DIR/sentinel-master.conf"
  echo "sentinel auth-pass $REDIS_MASTER_NAME $REDIS_ADMIN_PASSWORD"
} > "$conf.tmp"
mv "$conf.tmp" "$conf"
echo "monitoring $REDIS_MASTER_NAME at $1:$2" >&2
exec "${REDIS_SERVER:-redis-server}" "$conf" --sentinel
"""

#: Probes. They authenticate (Redis as the metrics user): an unauthenticated PING is
#: refused by design.
#:   redis-live      the server answers (PONG, or LOADING while it reads its AOF)
#:   redis-ready     PONG, and on a replica the link to its primary is up
#:   sentinel-live   the Sentinel answers PING
#:   sentinel-ready  the Sentinel knows the primary's address
PROBE_SH = r"""#!/bin/sh
set -eu
cli() {
  timeout 4 redis-cli --no-auth-warning --raw "$@"
}
case "$1" in
  redis-live)
    out=$(REDISCLI_AUTH="$REDIS_METRICS_PASSWORD" cli --user metrics -p "$REDIS_PORT" PING 2>&1 || true)
    case "$out" in PONG|LOADING*|*"MASTERDOWN"*) exit 0 ;; *) echo "$out"; exit 1 ;; esac
    ;;
  redis-ready)
    out=$(REDISCLI_AUTH="$REDIS_METRICS_PASSWORD" cli --user metrics -p "$REDIS_PORT" PING)
    [ "$out" = "PONG" ] || { echo "$out"; exit 1; }
    info=$(REDISCLI_AUTH="$REDIS_METRICS_PASSWORD" cli --user metrics -p "$REDIS_PORT" INFO replication)
    case "$info" in
      *role:master*) exit 0 ;;
      *master_link_status:up*) exit 0 ;;
      *) echo "replica not linked to its primary"; exit 1 ;;
    esac
    ;;
  sentinel-live)
    out=$(REDISCLI_AUTH="$REDIS_SENTINEL_PASSWORD" cli -p "$SENTINEL_PORT" PING)
    [ "$out" = "PONG" ] || { echo "$out"; exit 1; }
    ;;
  sentinel-ready)
    out=$(REDISCLI_AUTH="$REDIS_SENTINEL_PASSWORD" cli -p "$SENTINEL_PORT" \
      SENTINEL get-master-addr-by-name "$REDIS_MASTER_NAME" | head -n 1)
    [ -n "$out" ] || { echo "no primary known"; exit 1; }
    ;;
  *)
    echo "usage: probe.sh redis-live|redis-ready|sentinel-live|sentinel-ready" >&2
    exit 2
    ;;
esac
"""


def config_files(options: RedisConfigOptions) -> dict[str, str]:
    """Every file the servers start from, by file name (a ConfigMap's data)."""
    return {
        "redis.conf": redis_conf(options),
        "sentinel.conf": sentinel_conf(options),
        "sentinel-master.conf": sentinel_master_conf(options),
        "lib.sh": LIB_SH,
        "start-redis.sh": START_REDIS,
        "start-sentinel.sh": START_SENTINEL,
        "probe.sh": PROBE_SH,
    }
