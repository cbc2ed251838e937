"""Render Redis and Sentinel configuration, and the scripts that start them.

One module for the chart and for every other place the same servers run (the
integration tests and the benchmark start them on one host with ports and paths
remapped), so what is tested is what is deployed.

What is rendered here never contains a secret. Passwords reach the servers at start:
:data:`START_REDIS` and :data:`START_SENTINEL` read them from the environment (a
Kubernetes ``secretKeyRef``). A member writes its runtime configuration into a private,
writable directory (a memory-backed ``emptyDir`` in the chart; Redis rewrites it on
``REPLICAOF`` + ``CONFIG REWRITE`` from Sentinel). A Sentinel's configuration file is its
state (the current primary, the epochs, its peers), which Sentinel rewrites as it learns:
it lives on the Sentinel's retained volume so that a power cut does not erase it, and it
therefore holds the Sentinel and admin passwords (file mode 0600, renewed at each start).

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

#: When Redis fsyncs its append-only file (redis.conf, APPEND ONLY MODE section; Redis docs,
#: "Redis persistence"): ``always`` before it replies to a write, ``everysec`` once a second
#: in a background thread, ``no`` when the kernel writes it back.
APPENDFSYNC_POLICIES = ("always", "everysec", "no")

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
    #: Replicas of the primary.
    replicas: int = 2
    port: int = 6379
    sentinel_port: int = 26379
    #: Addresses to listen on. ``* -::*``: every IPv4 address and, if present, IPv6
    #: (a pod has one interface; the NetworkPolicy decides who reaches it).
    bind: str = "* -::*"
    #: Data directory (the persistent volume): the AOF and RDB files.
    data_dir: str = "/data"
    maxmemory_mib: int = 1024
    maxmemory_policy: str = "volatile-lru"
    #: One of :data:`APPENDFSYNC_POLICIES`.
    appendfsync: str = "everysec"
    quorum: int = 2
    down_after_ms: int = 5000
    failover_timeout_ms: int = 60000
    #: Replicas resynchronised at once after a failover; 1 keeps the others serving reads.
    parallel_syncs: int = 1
    #: Seconds the bootstrap member with an empty data directory waits for a Sentinel or
    #: a member to answer before it starts a new, empty set as its primary.
    bootstrap_wait_s: int = 30
    #: Seconds the primary's preStop hook (:data:`PRESTOP_REDIS`) may take to hand over. A
    #: forced Sentinel failover of caught-up replicas completes in 1-2 s (the Sentinel sees
    #: the promotion in the replica's INFO, which it asks every second during a failover:
    #: sentinel.c, sentinelSendPeriodicCommands); 20 s leave room for the replicas to catch
    #: up and for asking a second and a third Sentinel when one goes away (a node drain stops a
    #: Sentinel at the same time), each after :data:`HANDOVER_RETRY_S`.
    handover_timeout_s: int = 20


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
        # Persistence: an append-only file; fsynced every second (everysec), a power cut
        # loses about the last second of writes (Redis docs, "Redis persistence", AOF).
        "appendonly yes",
        f"appendfsync {o.appendfsync}",
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
        # A diskless sync waits repl-diskless-sync-delay (5 s) for more replicas to share
        # the transfer, unless every replica is already waiting (Redis 7.0+, redis.conf):
        # after a full restart the replicas resynchronise, and acknowledged writes wait
        # for them, without that delay.
        f"repl-diskless-sync-max-replicas {o.replicas}",
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
#   REDIS_RUNTIME_DIR  private writable directory for a member's runtime configuration
#   REDIS_DATA_DIR     a member's data directory (its retained volume)
#   REDIS_SENTINEL_DIR a Sentinel's state directory (its retained volume)
#   REDIS_PORT, SENTINEL_PORT, REDIS_MASTER_NAME, SENTINEL_QUORUM
#   REDIS_ANNOUNCE_HOST   this member's stable name (its pod DNS name)
#   REDIS_MEMBERS      space-separated host:port of every Redis member
#   REDIS_BOOTSTRAP_PRIMARY  host:port of the member that may bootstrap an EMPTY set
#   REDIS_BOOTSTRAP_WAIT_S   seconds it first waits for a Sentinel or a member to answer
#   REDIS_RETRY_S      seconds between two rounds of questions while waiting
#   REDIS_SENTINELS    space-separated host:port of every Sentinel
#   REDIS_ADMIN_PASSWORD, REDIS_APP_PASSWORD, REDIS_METRICS_PASSWORD,
#   REDIS_SENTINEL_PASSWORD (secretKeyRef)
#   REDIS_SERVER       the redis-server binary (default: redis-server on PATH)
#   REDIS_HANDOVER_TIMEOUT_S  seconds the primary's preStop hook may take to hand over

#: File an operator creates in a member's data directory to make it start as the
#: primary when nothing else can decide (see the README, "power cut").
FORCE_PRIMARY_FILE = "force-primary"
#: ``replica-priority`` of a replica once it has synchronised with its primary (the
#: Redis default, redis.conf); a replica starts at 0, which Sentinel never promotes.
REPLICA_PRIORITY = 100
#: Seconds the preStop hook waits for the Sentinels to name a new primary before it asks
#: the next Sentinel to fail over (the one asked may be stopping, as in a node drain).
HANDOVER_RETRY_S = 4

#: Shared shell functions: ask the Sentinels and the members who is the primary.
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

count() {
  echo "$#"
}

# redis-cli against the Sentinel at $1 (host:port), the rest of the arguments a command.
sentinel_cli() {
  target=$1
  shift
  REDISCLI_AUTH="$REDIS_SENTINEL_PASSWORD" timeout 3 \
    redis-cli --no-auth-warning --raw -h "${target%:*}" -p "${target##*:}" "$@" 2>/dev/null | tr -d '\r'
}

# One line "config-epoch host port" per Sentinel (this one excluded) that answers. The
# address is what Sentinel gives clients (during a failover, the promoted replica once
# the others are being reconfigured); the epoch is that of its configuration.
sentinel_views() {
  for addr in $REDIS_SENTINELS; do
    if [ "$addr" = "${SELF_SENTINEL:-}" ]; then
      continue
    fi
    epoch=$(sentinel_cli "$addr" SENTINEL master "$REDIS_MASTER_NAME" |
      awk 'NR % 2 == 1 { key = $0; next } key == "config-epoch" { print $0 + 0 }') || continue
    answer=$(sentinel_cli "$addr" SENTINEL get-master-addr-by-name "$REDIS_MASTER_NAME" | tr '\n' ' ') || continue
    set -- $answer
    if [ -n "$epoch" ] && [ "$#" -eq 2 ] && [ "$2" -gt 0 ] 2>/dev/null; then
      echo "$epoch $1 $2"
    fi
  done
}

# "config-epoch host port" of the primary named with the highest config epoch (the
# latest failover wins, as between Sentinels), then by the most Sentinels, when at
# least $1 Sentinels answer.
sentinel_primary() {
  views=$(sentinel_views)
  answered=$(printf '%s\n' "$views" | grep -c . || true)
  if [ "$answered" -ge "$1" ]; then
    printf '%s\n' "$views" | sort | uniq -c | sort -k2,2nr -k1,1nr | head -n 1 | awk '{ print $2, $3, $4 }'
  fi
}

# One line "rank offset host port" per reachable member (this one excluded): rank 2 a
# primary, rank 1 a replica whose link to its primary is up. A replica whose link is
# down may hold old data (it may have been down while writes were acknowledged), so it
# is never followed. Offsets restart at 0 when a member restarts: they only order
# members that kept running.
member_views() {
  for addr in $REDIS_MEMBERS; do
    if [ "$addr" = "${SELF_MEMBER:-}" ]; then
      continue
    fi
    REDISCLI_AUTH="$REDIS_ADMIN_PASSWORD" timeout 3 \
      redis-cli --no-auth-warning --raw --user admin -h "${addr%:*}" -p "${addr##*:}" \
      INFO replication 2>/dev/null | tr -d '\r' |
      awk -F: -v host="${addr%:*}" -v port="${addr##*:}" '{ v[$1] = $2 }
        END {
          if (v["role"] == "master") print 2, v["master_repl_offset"] + 0, host, port
          else if (v["role"] == "slave" && v["master_link_status"] == "up") print 1, v["slave_repl_offset"] + 0, host, port
        }' || true
  done
}

# "host port" of the most up-to-date reachable member: a primary before any replica,
# then the larger replication offset; nothing when no member qualifies.
best_member() {
  member_views | sort -k1,1nr -k2,2nr | head -n 1 | cut -d ' ' -f 3-
}

# "host port" of the most up-to-date reachable primary (what a Sentinel may monitor).
best_primary() {
  member_views | grep '^2 ' | sort -k2,2nr | head -n 1 | cut -d ' ' -f 3- || true
}

# redis-cli as the admin user against the member at $1 (host:port), the rest a command.
member_cli() {
  target=$1
  shift
  REDISCLI_AUTH="$REDIS_ADMIN_PASSWORD" timeout 3 \
    redis-cli --no-auth-warning --raw --user admin -h "${target%:*}" -p "${target##*:}" "$@" 2>/dev/null | tr -d '\r'
}

# The value of field $1 of the INFO text on stdin.
info_field() {
  awk -F: -v key="$1" '$1 == key { print $2 }'
}

# One line per Sentinel answering that may be failing over the primary it names: it holds
# it subjectively or objectively down, runs a failover of it, or has had no reply from it
# for more than half of down-after-milliseconds (it may call it down before a server
# started now answers its pings).
failover_suspicions() {
  for addr in $REDIS_SENTINELS; do
    sentinel_cli "$addr" SENTINEL master "$REDIS_MASTER_NAME" |
      awk -v addr="$addr" 'NR % 2 == 1 { key = $0; next } { v[key] = $0 }
        END {
          if (v["flags"] ~ /s_down|o_down|failover_in_progress/) print addr ": " v["flags"]
          else if (v["last-ok-ping-reply"] + 0 > v["down-after-milliseconds"] / 2)
            print addr ": no reply from it for " v["last-ok-ping-reply"] " ms"
        }' || true
  done
}

# The name of each replica that a Sentinel answering could promote: neither down nor
# disconnected, replica-priority above 0 (sentinel.c, sentinelSelectSlave). SENTINEL
# REPLICAS lists each replica's fields in this order: name ... flags ... slave-priority.
promotable_replicas() {
  for addr in $REDIS_SENTINELS; do
    sentinel_cli "$addr" SENTINEL replicas "$REDIS_MASTER_NAME" |
      awk 'NR % 2 == 1 { key = $0; next }
        key == "name" { name = $0 }
        key == "flags" { flags = $0 }
        key == "slave-priority" && flags !~ /s_down|o_down|disconnected/ && $0 + 0 > 0 { print name }' || true
  done
}

# Log a waiting message at most every 30 s.
say_waiting() {
  now=$(date +%s)
  if [ $((now - ${last_said:-0})) -ge 30 ]; then
    echo "$1" >&2
    last_said=$now
  fi
}
"""

#: Start one Redis member: follow the primary the Sentinels name, else the most
#: up-to-date reachable member, else wait (or bootstrap an empty set).
START_REDIS = r"""#!/bin/sh
# Start a Redis member. In order:
# 1. a majority of the Sentinels answers: follow the primary they name (highest config
#    epoch). Sentinels keep their state on their own volumes, so after a power cut they
#    still name the primary of the latest failover;
# 2. else, a member answers as primary, or as a replica linked to its primary: follow
#    the most up-to-date of them;
# 3. else, an operator created __FORCE__ in the data directory: start as primary;
# 4. else, this is the bootstrap member and its data directory is EMPTY, and nothing
#    answered for REDIS_BOOTSTRAP_WAIT_S: first boot of the set, start as primary;
# 5. else wait and ask again: a member with data never elects itself, since its data
#    may be older than what the others acknowledged.
# Named primary with an empty data directory (a lost volume), it waits for the failover.
# Named primary while the Sentinels may be failing it over (down in their view, or not
# heard from for half of down-after), it waits for the failover as well, unless they know
# no replica they could promote (or __FORCE__ exists).
# A replica starts with replica-priority 0 (Sentinel never promotes it) and gets the
# default priority back once it has synchronised with its primary: a replica that came
# back with old data and has not caught up can never become the primary.
. "$REDIS_CONFIG_DIR/lib.sh"
require REDIS_CONFIG_DIR REDIS_RUNTIME_DIR REDIS_DATA_DIR REDIS_PORT REDIS_ANNOUNCE_HOST REDIS_MEMBERS \
  REDIS_BOOTSTRAP_PRIMARY REDIS_BOOTSTRAP_WAIT_S REDIS_SENTINELS REDIS_MASTER_NAME REDIS_ADMIN_PASSWORD \
  REDIS_APP_PASSWORD REDIS_SENTINEL_PASSWORD REDIS_METRICS_PASSWORD
SELF_MEMBER="$REDIS_ANNOUNCE_HOST:$REDIS_PORT"
majority=$(($(count $REDIS_SENTINELS) / 2 + 1))
started=$(date +%s)

has_data() {
  [ -e "$REDIS_DATA_DIR/appendonlydir" ] || [ -e "$REDIS_DATA_DIR/dump.rdb" ]
}

while :; do
  primary=$(sentinel_primary "$majority" | cut -d ' ' -f 2-)
  source="named by the Sentinels"
  if [ "$primary" = "$REDIS_ANNOUNCE_HOST $REDIS_PORT" ] && ! has_data; then
    # This member was the primary and lost its volume: as an empty primary it would
    # empty every replica. The Sentinels fail over to a synchronised replica meanwhile.
    say_waiting "the Sentinels name this member, whose data directory is empty: waiting for their failover"
    sleep "${REDIS_RETRY_S:-2}"
    continue
  fi
  if [ "$primary" = "$REDIS_ANNOUNCE_HOST $REDIS_PORT" ] && [ ! -e "$REDIS_DATA_DIR/__FORCE__" ]; then
    # Named, but the Sentinels may be failing this member over: a Sentinel names the
    # promoted replica only once it has seen the promotion. Started as primary now, it
    # would take writes that the failover then discards (clients asking a Sentinel that has
    # not switched yet keep writing here until a Sentinel converts it, seconds later). It
    # waits for the Sentinels to name the new primary, unless none of them knows a replica
    # it could promote: then nobody else can take over.
    suspicions=$(failover_suspicions)
    if [ -n "$suspicions" ] && [ -n "$(promotable_replicas)" ]; then
      say_waiting "the Sentinels name this member but may be failing it over ($(printf '%s' "$suspicions" | tr '\n' ';')): waiting for them to name the new primary"
      sleep "${REDIS_RETRY_S:-2}"
      continue
    fi
  fi
  [ -z "$primary" ] || break
  primary=$(best_member)
  source="the most up-to-date member answering, no Sentinel majority"
  [ -z "$primary" ] || break
  if [ -e "$REDIS_DATA_DIR/__FORCE__" ]; then
    rm -f "$REDIS_DATA_DIR/__FORCE__"
    primary="$REDIS_ANNOUNCE_HOST $REDIS_PORT"
    source="forced by $REDIS_DATA_DIR/__FORCE__"
    break
  fi
  if [ "$SELF_MEMBER" = "$REDIS_BOOTSTRAP_PRIMARY" ] && ! has_data; then
    if [ $(($(date +%s) - started)) -ge "$REDIS_BOOTSTRAP_WAIT_S" ]; then
      primary="$REDIS_ANNOUNCE_HOST $REDIS_PORT"
      source="first boot: empty data, nothing answered for ${REDIS_BOOTSTRAP_WAIT_S} s"
      break
    fi
    say_waiting "empty data: waiting up to ${REDIS_BOOTSTRAP_WAIT_S} s for a Sentinel majority or a member before bootstrapping"
  elif has_data; then
    say_waiting "waiting for a Sentinel majority or a member to follow; this member has data and does not elect itself (operator: create $REDIS_DATA_DIR/__FORCE__)"
  else
    say_waiting "empty data: waiting for a Sentinel majority or a member to follow"
  fi
  sleep "${REDIS_RETRY_S:-2}"
done
set -- $primary
primary_host=$1
primary_port=$2

umask 077
conf="$REDIS_RUNTIME_DIR/redis.conf"
replica=no
# A brace group with a redirection runs in this shell: "replica" is set here.
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
    echo "replica-priority 0"
    replica=yes
  fi
} > "$conf.tmp"
mv "$conf.tmp" "$conf"

# Once linked and synchronised, the replica may be promoted again.
if [ "$replica" = yes ]; then
  (
    while sleep 1; do
      info=$(REDISCLI_AUTH="$REDIS_ADMIN_PASSWORD" timeout 3 redis-cli --no-auth-warning --raw --user admin \
        -p "$REDIS_PORT" INFO replication 2>/dev/null | tr -d '\r') || continue
      case "$info" in *role:master*) exit 0 ;; esac
      case "$info" in *master_link_status:up*) ;; *) continue ;; esac
      case "$info" in *master_sync_in_progress:0*) ;; *) continue ;; esac
      if REDISCLI_AUTH="$REDIS_ADMIN_PASSWORD" timeout 3 redis-cli --no-auth-warning --user admin \
        -p "$REDIS_PORT" CONFIG SET replica-priority __PRIORITY__ >/dev/null 2>&1; then
        echo "synchronised with the primary: replica-priority __PRIORITY__" >&2
        exit 0
      fi
    done
  ) &
fi
exec "${REDIS_SERVER:-redis-server}" "$conf"
""".replace("__APP_PERMISSIONS__", APP_PERMISSIONS).replace(
    "__METRICS_PERMISSIONS__", METRICS_PERMISSIONS
).replace("__FORCE__", FORCE_PRIMARY_FILE).replace("__PRIORITY__", str(REPLICA_PRIORITY))

#: Start one Sentinel from its saved state, or from what its peers or the members report.
START_SENTINEL = r"""#!/bin/sh
# Start a Sentinel. Its configuration file, which Sentinel rewrites (fsync, rename) with
# everything it learns (the primary, the config and current epochs, the replicas and the
# other Sentinels), lives on its own retained volume, so a restart, even of every
# Sentinel at once, resumes from the latest failover it knew. Kept rather than rebuilt
# from the members: a restarted member's replication offset starts again at 0 (the AOF
# does not keep it), so after a power cut the members cannot tell who holds the latest
# writes, and only a kept config epoch stops a Sentinel that missed a failover from
# overruling it. Only the settings and passwords are renewed at each start. Without
# saved state (first boot, or a lost
# volume) it monitors the primary the other Sentinels name, with their config epoch,
# else the most up-to-date member answering as primary; else it waits.
. "$REDIS_CONFIG_DIR/lib.sh"
require REDIS_CONFIG_DIR REDIS_SENTINEL_DIR SENTINEL_PORT SENTINEL_QUORUM REDIS_ANNOUNCE_HOST \
  REDIS_MEMBERS REDIS_SENTINELS REDIS_MASTER_NAME REDIS_ADMIN_PASSWORD REDIS_SENTINEL_PASSWORD
SELF_SENTINEL="$REDIS_ANNOUNCE_HOST:$SENTINEL_PORT"
name=$REDIS_MASTER_NAME
conf="$REDIS_SENTINEL_DIR/sentinel.conf"
umask 077

saved=""
if [ -f "$conf" ]; then
  saved=$(awk -v name="$name" '$1 == "sentinel" && $2 == "monitor" && $3 == name { print $4, $5 }' "$conf" | tr -d '"')
fi
if [ -n "$saved" ]; then
  primary=$saved
  source="saved state"
  # Sentinel's own state lines; everything else is rendered anew.
  global_state=$(grep -E '^sentinel (myid|current-epoch) ' "$conf" || true)
  master_state=$(grep -E "^sentinel (config-epoch|leader-epoch|known-replica|known-sentinel) \"?$name\"? " "$conf" || true)
else
  while :; do
    view=$(sentinel_primary 1)
    if [ -n "$view" ]; then
      set -- $view
      primary="$2 $3"
      source="named by the other Sentinels, config epoch $1"
      global_state="sentinel current-epoch $1"
      master_state="sentinel config-epoch $name $1"
      break
    fi
    primary=$(best_primary)
    if [ -n "$primary" ]; then
      source="the most up-to-date member answering as primary"
      global_state=""
      master_state=""
      break
    fi
    say_waiting "no saved state, no Sentinel and no primary answering: waiting"
    sleep "${REDIS_RETRY_S:-2}"
  done
fi
set -- $primary

{
  cat "$REDIS_CONFIG_DIR/sentinel.conf"
  echo "dir $REDIS_SENTINEL_DIR"
  echo "sentinel announce-ip $REDIS_ANNOUNCE_HOST"
  echo "sentinel announce-port $SENTINEL_PORT"
  echo "requirepass $REDIS_SENTINEL_PASSWORD"
  echo "sentinel sentinel-pass $REDIS_SENTINEL_PASSWORD"
  [ -z "$global_state" ] || printf '%s\n' "$global_state"
  echo "sentinel monitor $name $1 $2 $SENTINEL_QUORUM"
  cat "$REDIS_CONFIG_DIR/sentinel-master.conf"
  echo "sentinel auth-pass $name $REDIS_ADMIN_PASSWORD"
  [ -z "$master_state" ] || printf '%s\n' "$master_state"
} > "$conf.tmp"
mv "$conf.tmp" "$conf"
echo "monitoring $name at $1:$2 ($source)" >&2
exec "${REDIS_SERVER:-redis-server}" "$conf" --sentinel
"""

#: The Redis container's preStop hook: a primary hands over to a caught-up replica before it stops.
PRESTOP_REDIS = r"""#!/bin/sh
# preStop hook of a Redis member: Kubernetes runs it before SIGTERM, within the pod's
# terminationGracePeriodSeconds. A replica stops as it is. The primary hands over first,
# without losing an acknowledged write, in the steps of Redis's coordinated FAILOVER
# command (redis.io/commands/failover):
# 1. no replication PING any more, then CLIENT PAUSE WRITE: no write, script or PUBLISH
#    runs on it, so its replication offset stops moving (redis.io/commands/client-pause);
# 2. every replica the Sentinels could promote (replica-priority above 0) reaches that
#    offset, its link up: whichever one they promote holds every write this primary took;
# 3. SENTINEL FAILOVER: a Sentinel promotes one of them and points the others at it, which
#    continue by partial resynchronisation, none being ahead of it;
# 4. once the Sentinels answering (a majority) all name the new primary, this member
#    becomes its replica (REPLICAOF), and once its link is up it is unpaused: the writes the pause held
#    fail with READONLY, on which a Sentinel client asks the Sentinels again and reconnects
#    to the new primary (redis-py: SentinelManagedConnection).
# FAILOVER itself would tell no Sentinel: they keep naming this member, a replica from
# then on, until they call it down (down-after-milliseconds plus two INFO periods: sentinel.c,
# sentinelCheckSubjectivelyDown) and fail over again to a replica of their choosing (Redis
# issue 13118). SENTINEL FAILOVER alone leaves this member a writable primary until a
# Sentinel converts it, about 8 s later (four hello periods): writes acknowledged there in
# the meantime are discarded when it and the replicas still following it resynchronise.
# If the hand-over fails, writes stay paused and the hook exits 1: the member is stopping
# anyway, and the Sentinels fail over as after a crash, with no write taken here meanwhile.
. "$REDIS_CONFIG_DIR/lib.sh"
require REDIS_CONFIG_DIR REDIS_PORT REDIS_ANNOUNCE_HOST REDIS_SENTINELS REDIS_MASTER_NAME \
  REDIS_ADMIN_PASSWORD REDIS_SENTINEL_PASSWORD REDIS_HANDOVER_TIMEOUT_S
self="127.0.0.1:$REDIS_PORT"
majority=$(($(count $REDIS_SENTINELS) / 2 + 1))
started=$(date +%s)
deadline=$((started + REDIS_HANDOVER_TIMEOUT_S))

fail() {
  echo "hand-over failed: $1; writes stay paused until the server stops, the Sentinels fail over after down-after-milliseconds" >&2
  exit 1
}

info=$(member_cli "$self" INFO replication)
if [ "$(printf '%s\n' "$info" | info_field role)" != master ]; then
  echo "not the primary: nothing to hand over" >&2
  exit 0
fi
named=$(sentinel_primary "$majority" | cut -d ' ' -f 2-)
if [ "$named" != "$REDIS_ANNOUNCE_HOST $REDIS_PORT" ]; then
  echo "a primary the Sentinels do not name (they name: ${named:-nothing, no majority answers}): nothing to hand over" >&2
  exit 0
fi
# slaveN:ip=HOST,port=PORT,state=...: the address each replica announces.
replicas=$(printf '%s\n' "$info" | awk -F'[:,=]' '/^slave[0-9]+:/ { print $3 ":" $5 }')
[ -n "$replicas" ] || fail "no replica is connected"

# No replication PING from here on. A paused primary still sends its replicas a PING every
# repl-ping-replica-period (10 s; replication.c, replicationCron: only a cluster manual
# failover or FAILOVER stops them). One sent after the promoted replica left puts this
# member and the replicas that got it 14 bytes ahead of the new primary's history, which
# then refuses their partial resynchronisation ("Partial resynchronization not accepted"):
# each loads a full copy, and acknowledged writes wait for it (WAIT). The period is
# checked as (seconds since start) % period == 0, so the largest value means never; the
# server stops after the hand-over, and starts with the configured period again.
member_cli "$self" CONFIG SET repl-ping-replica-period 2147483647 >/dev/null ||
  echo "CONFIG SET repl-ping-replica-period refused: the replicas may need a full resynchronisation" >&2
# Paused beyond the hook's end: a hook that gives up leaves the pause to the server's shutdown.
member_cli "$self" CLIENT PAUSE $(((REDIS_HANDOVER_TIMEOUT_S + 30) * 1000)) WRITE >/dev/null ||
  fail "CLIENT PAUSE refused"
offset=$(member_cli "$self" INFO replication | info_field master_repl_offset)
[ -n "$offset" ] || fail "no replication offset"

while :; do
  promotable=0
  behind=""
  # What the Sentinels list as promotable, asked once per round and only if a replica has
  # replica-priority 0: every question here is asked while writes are paused.
  listed=""
  for replica in $replicas; do
    state=$(member_cli "$replica" INFO replication)
    priority=$(printf '%s\n' "$state" | info_field slave_priority)
    if [ "${priority:-1}" = 0 ]; then
      # Never promoted, so it may lag (still synchronising after a restart): unless a
      # Sentinel still lists it as promotable, from INFO up to 10 s old (sentinel.c,
      # sentinel_info_period), and could pick it. Readiness and the PDB normally keep a
      # primary from stopping that soon after a replica restarted.
      [ -n "$listed" ] || listed=" $(promotable_replicas | tr '\n' ' ') "
      case "$listed" in
        *" $replica "*) ;;
        *) continue ;;
      esac
    fi
    reached=$(printf '%s\n' "$state" | info_field slave_repl_offset)
    case "$state" in
      *master_link_status:up*)
        if [ "${reached:-0}" -ge "$offset" ]; then
          promotable=$((promotable + 1))
          continue
        fi
        ;;
    esac
    behind="$behind $replica(${reached:-no answer})"
  done
  [ -n "$behind" ] || break
  [ "$(date +%s)" -lt "$deadline" ] || fail "replicas behind offset $offset:$behind"
  sleep 0.05
done
[ "$promotable" -gt 0 ] || fail "no replica the Sentinels could promote (all have replica-priority 0)"

asked=0
asked_at=0
moved=0
while :; do
  now=$(date +%s)
  # Asked before the Sentinels are polled, not after a first round of questions: every
  # round adds to the pause, several tenths of a second each on a loaded host. Asked again
  # only while no Sentinel names another primary: one that does has seen the promotion, and
  # asked to fail over it would fail over the new primary, which takes writes unpaused.
  if [ "$moved" = 0 ] && [ $((now - asked_at)) -ge __RETRY__ ]; then
    # The next Sentinel each time, and at once when one does not answer: the one asked
    # before may be stopping (a node drain stops a Sentinel too).
    set -- $REDIS_SENTINELS
    shift $((asked % $#))
    answer=$(sentinel_cli "$1" SENTINEL FAILOVER "$REDIS_MASTER_NAME" | tr '\n' ' ')
    echo "asked the Sentinel $1 to fail over: ${answer:-no answer}" >&2
    asked=$((asked + 1))
    [ -z "$answer" ] || asked_at=$now
  fi
  # What clients are told (get-master-addr-by-name: Redis docs, "Sentinel client spec"):
  # the promoted replica once a Sentinel has seen the promotion, or learnt it from the
  # hello of the Sentinel that ran the failover.
  # One question per Sentinel: writes are paused while this loop runs.
  views=$(for addr in $REDIS_SENTINELS; do
    sentinel_cli "$addr" SENTINEL get-master-addr-by-name "$REDIS_MASTER_NAME" | tr '\n' ' ' |
      awk 'NF == 2 { print $1, $2 }' || true
  done)
  answered=$(printf '%s\n' "$views" | grep -c . || true)
  names=$(printf '%s\n' "$views" | grep . | sort -u)
  if printf '%s\n' "$names" | grep . | grep -qvx "$REDIS_ANNOUNCE_HOST $REDIS_PORT"; then
    moved=1
  fi
  if [ "$answered" -ge "$majority" ] && [ "$(printf '%s\n' "$names" | grep -c .)" -eq 1 ] &&
    [ "$names" != "$REDIS_ANNOUNCE_HOST $REDIS_PORT" ]; then
    break
  fi
  [ "$(date +%s)" -lt "$deadline" ] || fail "the Sentinels did not agree on a new primary (they name: $(printf '%s' "$names" | tr '\n' ';'))"
  sleep 0.05
done
set -- $names
member_cli "$self" REPLICAOF "$1" "$2" >/dev/null || fail "REPLICAOF $1 $2 refused"
# Unpaused only once this member follows the new primary (a partial resynchronisation, its
# offset being the promoted one's): a client's WAIT sent to the new primary before any
# replica follows it waits for that replica's next periodic REPLCONF ACK, up to a second
# (replicationCron), and with the client's 1 s timeout fails the write instead.
while [ "$(member_cli "$self" INFO replication | info_field master_link_status)" != up ] &&
  [ "$(date +%s)" -lt "$deadline" ]; do
  sleep 0.02
done
member_cli "$self" CLIENT UNPAUSE >/dev/null
echo "handed over to $1:$2 in $(($(date +%s) - started)) s; now its replica" >&2
""".replace("__RETRY__", str(HANDOVER_RETRY_S))

#: Seconds a membership step (:data:`MEMBERSHIP_SH`) waits for the Sentinels to see what it
#: expects before it fails: a Sentinel learns replicas from the primary's INFO every 10 s and
#: the other Sentinels from their hellos every 2 s, and calls a removed one down after
#: down-after-milliseconds (Redis docs, "High availability with Redis Sentinel": "Adding or
#: removing Sentinels", "Removing the old master or unreachable replicas").
MEMBERSHIP_TIMEOUT_S = 120

#: The steps of a membership change (``final-problem scale redis.replicas=N`` /
#: ``redis.sentinels=N``, :mod:`final_problem.charts.redis`), run in a pod with ``kubectl exec``.
MEMBERSHIP_SH = r"""#!/bin/sh
# Membership steps of the Redis set, one per call (Redis docs, "High availability with Redis
# Sentinel": "Adding or removing Sentinels", "Removing the old master or unreachable
# replicas"; commands SENTINEL RESET, SENTINEL SET). Every step is safe to repeat.
#   retire               (in a member being removed) replica-priority 0, so no Sentinel
#                        promotes it; refused unless another replica is promotable. A
#                        primary keeps running: its preStop hook hands over when it stops.
#   reset R S            (in a Sentinel) once it sees exactly R replicas and S-1 other
#                        Sentinels up (the removed ones down), SENTINEL RESET, then wait until
#                        it has found them again and nothing else: what the docs' 30 s
#                        between two Sentinels are for, checked instead of assumed.
#   quorum Q             (in a Sentinel) SENTINEL SET <name> quorum Q.
#   agree R S [Q]        (in a Sentinel) wait until it and every Sentinel it knows name one
#                        primary, list exactly R replicas and S-1 other Sentinels, none down
#                        (and use quorum Q).
# Output: one line saying what was done; failure: one line (what, why, what to do), exit 1.
. "$REDIS_CONFIG_DIR/lib.sh"
require REDIS_CONFIG_DIR REDIS_MASTER_NAME REDIS_SENTINELS REDIS_ADMIN_PASSWORD REDIS_SENTINEL_PASSWORD
timeout_s=${MEMBERSHIP_TIMEOUT_S:-__TIMEOUT__}
last=""

fail() {
  echo "$1" >&2
  exit 1
}

# Wait until the command in the arguments after $1 succeeds; else fail with $1 and what the
# last check saw.
wait_until() {
  what=$1
  shift
  deadline=$(($(date +%s) + timeout_s))
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] ||
      fail "$what: not within $timeout_s s (${last:-no answer}); check the pods, then run the command again"
    sleep 1
  done
}

# One line "host:port flags" per replica (KIND replicas) or other Sentinel (KIND sentinels)
# the Sentinel at $1 knows.
known() {
  sentinel_cli "$1" SENTINEL "$2" "$REDIS_MASTER_NAME" |
    awk 'NR % 2 == 1 { key = $0; next }
      key == "name" && seen { print ip ":" port, flags }
      key == "name" { seen = 1 }
      key == "ip" { ip = $0 }
      key == "port" { port = $0 }
      key == "flags" { flags = $0 }
      END { if (seen) print ip ":" port, flags }'
}

# Sets, for the Sentinel at $1: primary ("host:port"), quorum, flags (of the primary), and
# the replicas and other Sentinels it knows (r_known, s_known) and holds up (r_up, s_up).
look() {
  at=$1
  primary=$(sentinel_cli "$at" SENTINEL get-master-addr-by-name "$REDIS_MASTER_NAME" | paste -sd ':' -)
  state=$(sentinel_cli "$at" SENTINEL master "$REDIS_MASTER_NAME" |
    awk 'NR % 2 == 1 { key = $0; next } key == "quorum" { q = $0 } key == "flags" { f = $0 } END { print q, f }')
  set -- $state
  quorum=${1:-?}
  flags=${2:-?}
  replicas=$(known "$at" replicas)
  sentinels=$(known "$at" sentinels)
  r_known=$(printf '%s\n' "$replicas" | grep -c . || true)
  s_known=$(printf '%s\n' "$sentinels" | grep -c . || true)
  r_up=$(printf '%s\n' "$replicas" | grep . | grep -cvE 's_down|o_down|disconnected' || true)
  s_up=$(printf '%s\n' "$sentinels" | grep . | grep -cvE 's_down|o_down|disconnected' || true)
}

# The Sentinel at $1 holds exactly $2 replicas and $3 - 1 other Sentinels up, whatever else it
# still lists down.
sees_up() {
  look "$1"
  last="$1: primary ${primary:-unknown}, replicas up $r_up of $r_known, other Sentinels up $s_up of $s_known"
  [ -n "$primary" ] && [ "$r_up" -eq "$2" ] && [ "$s_up" -eq $(($3 - 1)) ]
}

# The Sentinel at $1 lists exactly $2 replicas and $3 - 1 other Sentinels, all up, the primary
# not down nor failing over, and (given $4) uses quorum $4.
sees_exactly() {
  look "$1"
  last="$1: primary ${primary:-unknown} ($flags), replicas up $r_up of $r_known, other Sentinels up $s_up of $s_known, quorum $quorum"
  [ -n "$primary" ] && [ "$flags" = master ] &&
    [ "$r_known" -eq "$2" ] && [ "$r_up" -eq "$2" ] &&
    [ "$s_known" -eq $(($3 - 1)) ] && [ "$s_up" -eq $(($3 - 1)) ] &&
    { [ -z "${4:-}" ] || [ "$quorum" = "$4" ]; }
}

# This Sentinel and every other it knows see exactly the membership ($1 replicas, $2
# Sentinels, quorum $3 if given) and name one primary.
all_agree() {
  sees_exactly "$self" "$@" || return 1
  agreed=$primary
  for peer in $(known "$self" sentinels | cut -d ' ' -f 1); do
    sees_exactly "$peer" "$@" || return 1
    if [ "$primary" != "$agreed" ]; then
      last="$self names $agreed, $peer names $primary"
      return 1
    fi
  done
}

case "${1:-}" in
  retire)
    require REDIS_PORT REDIS_ANNOUNCE_HOST
    self="127.0.0.1:$REDIS_PORT"
    name="$REDIS_ANNOUNCE_HOST:$REDIS_PORT"
    others=$(promotable_replicas | grep -vxF "$name" | sort -u | tr '\n' ' ')
    [ -n "$others" ] || fail "retire $name: refused, no other replica a Sentinel could promote, so removing this member could leave the primary without a copy to fail over to; wait until the other replicas are Ready, then run the command again"
    [ "$(member_cli "$self" CONFIG SET replica-priority 0)" = OK ] || fail "retire $name: CONFIG SET replica-priority 0 refused; check the member, then run the command again"
    if [ "$(member_cli "$self" INFO replication | info_field role)" = master ]; then
      echo "retired $name, the primary: its preStop hook hands over to one of: $others"
      exit 0
    fi
    not_promotable() {
      listed=$(promotable_replicas | grep -cxF "$name" || true)
      last="$listed Sentinel(s) still list it as promotable"
      [ "$listed" -eq 0 ]
    }
    wait_until "retire $name: the Sentinels to read its replica-priority 0" not_promotable
    echo "retired $name: replica-priority 0, no Sentinel will promote it; kept promotable: $others"
    ;;
  reset)
    require SENTINEL_PORT
    [ "$#" -eq 3 ] || fail "usage: membership.sh reset REPLICAS SENTINELS"
    self="127.0.0.1:$SENTINEL_PORT"
    wait_until "reset: the removed members and Sentinels to be down in this Sentinel's view" sees_up "$self" "$2" "$3"
    [ "$(sentinel_cli "$self" SENTINEL RESET "$REDIS_MASTER_NAME")" = 1 ] ||
      fail "reset: SENTINEL RESET $REDIS_MASTER_NAME did not reset one primary; check the Sentinel, then run the command again"
    wait_until "reset: this Sentinel to find the $2 replicas and $(($3 - 1)) other Sentinels again" sees_exactly "$self" "$2" "$3"
    echo "reset: $last"
    ;;
  quorum)
    require SENTINEL_PORT
    [ "$#" -eq 2 ] || fail "usage: membership.sh quorum QUORUM"
    self="127.0.0.1:$SENTINEL_PORT"
    [ "$(sentinel_cli "$self" SENTINEL SET "$REDIS_MASTER_NAME" quorum "$2")" = OK ] ||
      fail "quorum: SENTINEL SET $REDIS_MASTER_NAME quorum $2 refused; check the Sentinel, then run the command again"
    echo "quorum $2 on $self"
    ;;
  agree)
    require SENTINEL_PORT
    [ "$#" -ge 3 ] || fail "usage: membership.sh agree REPLICAS SENTINELS [QUORUM]"
    self="127.0.0.1:$SENTINEL_PORT"
    shift
    wait_until "agree: every Sentinel to see $1 replicas and $2 Sentinels${3:+, quorum $3}" all_agree "$@"
    echo "$2 Sentinels agree: primary $agreed, $1 replicas, $2 Sentinels, quorum $quorum"
    ;;
  *)
    fail "usage: membership.sh retire | reset REPLICAS SENTINELS | quorum QUORUM | agree REPLICAS SENTINELS [QUORUM]"
    ;;
esac
""".replace("__TIMEOUT__", str(MEMBERSHIP_TIMEOUT_S))

#: Probes. They authenticate (Redis as the metrics user): an unauthenticated PING is
#: refused by design.
#:   redis-live      the server answers (PONG, or LOADING while it reads its AOF)
#:   redis-ready     PONG; a replica also has its link to its primary up, its first sync
#:                   done, replica-priority above 0, and has reached the offset its primary
#:                   had when asked (a StatefulSet rollout stops the next member only then)
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
    info=$(REDISCLI_AUTH="$REDIS_METRICS_PASSWORD" cli --user metrics -p "$REDIS_PORT" INFO replication | tr -d '\r')
    case "$info" in *role:master*) exit 0 ;; esac
    case "$info" in *master_link_status:up*) ;; *) echo "replica not linked to its primary"; exit 1 ;; esac
    case "$info" in *master_sync_in_progress:0*) ;; *) echo "replica still loading its first sync"; exit 1 ;; esac
    # Its start script raises the priority once synchronised: until then the Sentinels
    # could not promote it, and it does not count as a copy.
    case "$info" in *slave_priority:0*) echo "replica not yet promotable (replica-priority 0)"; exit 1 ;; esac
    field() { printf '%s\n' "$2" | awk -F: -v key="$1" '$1 == key { print $2 }'; }
    host=$(field master_host "$info")
    port=$(field master_port "$info")
    # Caught up: holds, now, what the primary held a moment ago.
    primary=$(REDISCLI_AUTH="$REDIS_METRICS_PASSWORD" cli --user metrics -h "$host" -p "$port" INFO replication | tr -d '\r')
    wanted=$(field master_repl_offset "$primary")
    reached=$(REDISCLI_AUTH="$REDIS_METRICS_PASSWORD" cli --user metrics -p "$REDIS_PORT" INFO replication | tr -d '\r' |
      awk -F: '$1 == "slave_repl_offset" { print $2 }')
    if [ -z "$wanted" ] || [ "${reached:-0}" -lt "$wanted" ]; then
      echo "replica at offset ${reached:-?}, its primary at ${wanted:-? (no answer)}"
      exit 1
    fi
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
        "prestop-redis.sh": PRESTOP_REDIS,
        "start-sentinel.sh": START_SENTINEL,
        "probe.sh": PROBE_SH,
        "membership.sh": MEMBERSHIP_SH,
    }
