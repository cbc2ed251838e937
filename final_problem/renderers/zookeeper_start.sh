#!/bin/bash
# Start one ZooKeeper member with dynamic membership (reconfigEnabled=true).
#
#   zookeeper_start.sh JAVA [JVM OPTIONS ...] -cp CLASSPATH org.apache.zookeeper.server.quorum.QuorumPeerMain
#
# The member's membership is the ensemble's committed configuration, never the rendered
# list once the ensemble runs:
#   1. the running ensemble's, asked with `conf` at $ZOO_ENSEMBLE (the client Service:
#      only members in a quorum and synced answer there);
#   2. else the dynamic file on this member's volume (ZooKeeper rewrites it at every
#      reconfig: the last membership this member learnt);
#   3. else the rendered initial list ($ZOO_CONF_DIR/zoo.cfg.dynamic), a new ensemble.
# A member absent from that membership joins: it starts with the membership plus itself
# as an observer, so it can only connect to the current leader and never forms a quorum
# of its own; it follows without a vote until `reconfig -add` makes it a participant
# (ZooKeeper Dynamic Reconfiguration guide, "Adding servers", option 1).
#
# Each start also makes this pod's own superuser password for reconfig (the guide,
# "Security"): random, written to $ZOO_SUPER_FILE (the pod's /tmp, mode 600), its
# digest given to the JVM; zookeeper_reconfig.sh reads it. No Secret holds it: only a
# process in this container (kubectl exec) can reconfigure through this member.
#
# Environment: ZOO_DATA_DIR (the data volume), ZOO_CONF_DIR (the rendered zoo.cfg and
# zoo.cfg.dynamic), ZOO_ENSEMBLE (host:port of the client Service), ZOO_PEER_DOMAIN (the
# headless Service's domain), ZOO_QUORUM_PORT, ZOO_ELECTION_PORT, ZOO_CLIENT_PORT,
# ZOO_SUPER_FILE; ZOO_MEMBER_HOST and ZOO_MEMBER_CLIENT override this member's address
# and client "[address:]port" (a host running several members).
set -eu

data="$ZOO_DATA_DIR"
conf="$ZOO_CONF_DIR"
ordinal="${HOSTNAME##*-}"
case "$ordinal" in ""|*[!0-9]*) echo "no ordinal in hostname $HOSTNAME" >&2; exit 1;; esac
myid=$((ordinal + 1))
echo "$myid" > "$data/myid"
host="${ZOO_MEMBER_HOST:-$HOSTNAME.$ZOO_PEER_DOMAIN}"
client="${ZOO_MEMBER_CLIENT:-$ZOO_CLIENT_PORT}"

# The superuser: sha1("super:" + password), base64, as DigestAuthenticationProvider
# checks it (ZooKeeper Administrator's Guide, "Authentication & Authorization Options").
umask 077
password="$(head -c 32 /dev/urandom | base64 | tr -d '\n/+=')"
printf '%s' "$password" > "$ZOO_SUPER_FILE.tmp"
mv "$ZOO_SUPER_FILE.tmp" "$ZOO_SUPER_FILE"
hex="$(printf 'super:%s' "$password" | sha1sum | cut -d' ' -f1)"
digest="$(printf '%b' "$(printf '%s' "$hex" | sed 's/../\\x&/g')" | base64)"
umask 022

# The committed membership of the running ensemble: `conf` ends with "membership:", the
# server lines and "version=<hex>" (QuorumZooKeeperServer.dumpConf).
# shellcheck disable=SC2016 # the inner bash expands its own arguments
live="$(timeout 5 bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf conf >&3 && cat <&3' _ \
    "${ZOO_ENSEMBLE%:*}" "${ZOO_ENSEMBLE##*:}" 2>/dev/null || true)"
live="$(printf '%s\n' "$live" | sed -n '/^membership:/,$p')"
servers="$(printf '%s\n' "$live" | grep '^server\.' || true)"
version="$(printf '%s\n' "$live" | sed -n 's/^version=\([0-9a-f]*\)$/\1/p')"
from="the running ensemble (version ${version:-0})"
if [ -z "$servers" ]; then
    current="$(sed -n 's/^dynamicConfigFile=//p' "$data/zoo.cfg" 2>/dev/null || true)"
    if [ -n "$current" ] && [ -s "$current" ]; then
        servers="$(grep '^server\.' "$current" || true)"
        version="${current##*.dynamic.}"
        from="its volume ($current)"
    else
        servers="$(grep '^server\.' "$conf/zoo.cfg.dynamic" || true)"
        version=""
        from="the rendered initial list"
        if ! printf '%s\n' "$servers" | grep -q "^server\.$myid="; then
            echo "member $myid: no member answers at $ZOO_ENSEMBLE and it is not in the initial list:" \
                 "it can only join a running ensemble; retrying on the next start" >&2
            exit 1
        fi
    fi
fi
case "$version" in *[!0-9a-f]*) version="";; esac
if ! printf '%s\n' "$servers" | grep -q "^server\.$myid="; then
    # A joiner: not a committed configuration, so unversioned (version 0): it adopts the
    # leader's configuration once connected.
    servers="$servers
server.$myid=$host:$ZOO_QUORUM_PORT:$ZOO_ELECTION_PORT:observer;$client"
    version=""
    from="$from, joining as an observer"
fi
dynamic="$data/zoo.cfg.dynamic.${version:-initial}"
printf '%s\n' "$servers" > "$dynamic.tmp"
mv "$dynamic.tmp" "$dynamic"
# The static settings follow the rendered file at every start; the membership stays the
# dynamic file's. ZooKeeper edits this copy (dynamicConfigFile) at each reconfig.
{ grep -v '^dynamicConfigFile=' "$conf/zoo.cfg"; echo "dynamicConfigFile=$dynamic"; } > "$data/zoo.cfg.tmp"
mv "$data/zoo.cfg.tmp" "$data/zoo.cfg"
echo "member $myid: $(printf '%s\n' "$servers" | grep -c '^server\.') members from $from" >&2

java="$1"
shift
exec "$java" "-Dzookeeper.DigestAuthenticationProvider.superDigest=super:$digest" "$@" "$data/zoo.cfg"
