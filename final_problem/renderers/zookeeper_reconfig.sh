#!/bin/bash
# Change the ensemble's membership by one member, through the member this runs beside.
#
#   zookeeper_reconfig.sh add 'server.N=HOST:QUORUM:ELECTION:participant;[ADDRESS:]CLIENT'
#   zookeeper_reconfig.sh remove N
#
# Safe to repeat: a member already a participant is not added again, an absent one not
# removed again. Refused (exit status 3, one line) when the ensemble after the change would
# have fewer live voters (synced participants) than its quorum, floor(n/2)+1, or when the
# member to add is not yet synced with the leader (a new configuration needs a quorum of
# its own members connected and synced: Dynamic Reconfiguration guide, "Adding servers").
# It returns once this member sees the new membership and, for an addition, once the new
# member follows as a voter.
#
# Environment: ZOO_CLIENT_PORT (this member's client port, on 127.0.0.1), ZOO_SUPER_FILE
# (the password zookeeper_start.sh made), ZOO_CLASSPATH (the zkCli classpath), JAVA
# (default java), ZOO_RECONFIG_TIMEOUT_S (default 120).
set -eu

port="$ZOO_CLIENT_PORT"
timeout_s="${ZOO_RECONFIG_TIMEOUT_S:-120}"
synced_state='^zk_peer_state[[:space:]]+(leading|following) - broadcast$'

word() {  # word HOST PORT WORD: a four-letter word's answer, empty when the member does not answer
    # shellcheck disable=SC2016 # the inner bash expands its own arguments
    timeout 5 bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf %s "$3" >&3 && cat <&3' _ "$1" "$2" "$3" 2>/dev/null || true
}
members() {  # the committed membership this member knows
    word 127.0.0.1 "$port" conf | sed -n '/^membership:/,$p' | grep '^server\.' || true
}
address() {  # address LINE: "host port" of a server line's client port (an any-address binds the member's host)
    local spec="${1#*=}" client chost
    client="${spec#*;}"
    case "$client" in *:*) chost="${client%:*}";; *) chost="";; esac
    case "$chost" in ""|0.0.0.0|"[::]") chost="${spec%%:*}";; esac
    echo "$chost ${client##*:}"
}
synced() {  # synced LINE: the member of that line leads or follows, in step with the leader
    local where
    read -r -a where <<< "$(address "$1")"
    word "${where[0]}" "${where[1]}" mntr | grep -qE "$synced_state"
}
live_voters() {  # live_voters LINES: how many of those participants are synced
    local line count=0
    while IFS= read -r line; do
        case "$line" in *:participant\;*) if synced "$line"; then count=$((count + 1)); fi;; esac
    done <<< "$1"
    echo "$count"
}
voters() { printf '%s\n' "$1" | grep -c ':participant;' || true; }
refuse() { echo "refused: $*" >&2; exit 3; }
zkcli() {  # zkcli COMMAND: run one zkCli command as this pod's superuser (read from stdin, not argv)
    printf 'addauth digest super:%s\n%s\nquit\n' "$(cat "$ZOO_SUPER_FILE")" "$1" |
        "${JAVA:-java}" -Xmx32m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djline.terminal=jline.UnsupportedTerminal \
            -cp "$ZOO_CLASSPATH" org.apache.zookeeper.ZooKeeperMain -server "127.0.0.1:$port" 2>&1 |
        grep -E '^(Committed new configuration|KeeperErrorCode|Insufficient permission|[A-Za-z]+Exception)' || true
}
wait_for() {  # wait_for WHAT COMMAND...: until COMMAND succeeds, at most timeout_s
    local what="$1" deadline=$((SECONDS + timeout_s))
    shift
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then echo "$what: not within ${timeout_s} s" >&2; exit 1; fi
        sleep 1
    done
}

action="${1:-}"
current="$(members)"
[ -n "$current" ] || { echo "this member (127.0.0.1:$port) does not serve: no quorum, or it is not synced; run again once its pod is Ready" >&2; exit 1; }
case "$action" in
add)
    line="${2:?the server line to add}"
    case "$line" in server.[0-9]*=*:participant\;*) ;; *) echo "not a participant's server line: $line" >&2; exit 2;; esac
    id="${line%%=*}"
    id="${id#server.}"
    participant() { members | grep -q "^server\.$id=.*:participant;"; }
    if participant; then
        echo "member $id is already a participant"
    else
        synced "$line" || refuse "member $id is not synced with the leader yet; wait until its pod is Ready, then run again"
        others="$(printf '%s\n' "$current" | grep -v "^server\.$id=" || true)"
        after="$(printf '%s\n%s\n' "$others" "$line")"
        n=$(voters "$after")
        live=$(( $(live_voters "$others") + 1 ))
        [ "$live" -ge $((n / 2 + 1)) ] ||
            refuse "adding member $id leaves $live live voters of $n, below the quorum of $((n / 2 + 1)); bring the members back first"
        zkcli "reconfig -add $line" | head -n 1
        wait_for "member $id in the membership" participant
    fi
    wait_for "member $id following as a voter" synced "$line"
    ;;
remove)
    id="${2:?the member id to remove}"
    case "$id" in ""|*[!0-9]*) echo "not a member id: $id" >&2; exit 2;; esac
    if ! printf '%s\n' "$current" | grep -q "^server\.$id="; then
        echo "member $id is not a member"
        exit 0
    fi
    after="$(printf '%s\n' "$current" | grep -v "^server\.$id=" || true)"
    n=$(voters "$after")
    live=$(live_voters "$after")
    [ "$n" -ge 1 ] || refuse "member $id is the last voter"
    [ "$live" -ge $((n / 2 + 1)) ] ||
        refuse "removing member $id leaves $live live voters of $n, below the quorum of $((n / 2 + 1)); bring the members back first"
    zkcli "reconfig -remove $id" | head -n 1
    gone() { ! members | grep -q "^server\.$id="; }
    wait_for "member $id out of the membership" gone
    ;;
*)
    echo "usage: $0 add 'server.N=host:quorum:election:participant;client' | remove N" >&2
    exit 2
    ;;
esac
