# Partition replicas and broker membership: sh brokers.sh COMMAND [OPTION...] BROKER_ID...
#
#   spread       every partition's replicas onto BROKER_IDs only, spread evenly over them
#                (per topic, replicas and preferred leaders within one of each other per
#                broker; then across topics), moved with a replication throttle, waited for
#                until complete (which clears the throttle), preferred leaders elected
#   check-empty  exit 3 with one line while any of BROKER_IDs holds a partition replica
#   has-config   exit 3 with one line unless CONFIG_DIR holds BROKER_IDs' server files
#   unregister   wait until BROKER_IDs are stopped, then remove their registrations
#
# Options: --home KAFKA_HOME (the release: libs/), --bootstrap HOST:PORT, --user ADMIN_USER
# (its password from $KAFKA_ADMIN_PASSWORD, read by Kafka's EnvVarConfigProvider: it is
# never written down), --throttle BYTES_PER_S (spread), --config-dir DIR and
# --first-id ID (has-config: broker ID's file is kafka-broker-(ID - first id).properties).
#
# Safe to run again at any point: spread first waits for a reassignment an earlier run left
# in progress, then plans from the assignment it finds. It gives up after --max-wait seconds
# (default 840, under the 900 s a kubectl exec is given) saying so; running it again goes on
# waiting. Tools: Kafka's own (kafka-topics, kafka-reassign-partitions, kafka-leader-election,
# kafka-cluster), run as `java -cp libs/*` as the chart runs the server. Kafka 4.4 docs,
# "Expanding your cluster", "Decommissioning brokers", "Limiting Bandwidth Usage during Data
# Migration".
set -eu
command=${1:-}
[ $# -gt 0 ] && shift
home=/opt/kafka bootstrap='' user=admin throttle='' config_dir='' first_id=100 max_wait=840
while [ $# -gt 0 ]; do
  case $1 in
    --home) home=$2; shift 2 ;;
    --bootstrap) bootstrap=$2; shift 2 ;;
    --user) user=$2; shift 2 ;;
    --throttle) throttle=$2; shift 2 ;;
    --config-dir) config_dir=$2; shift 2 ;;
    --first-id) first_id=$2; shift 2 ;;
    --max-wait) max_wait=$2; shift 2 ;;
    -*) echo "brokers.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
ids="$*"
case $command in
  spread|check-empty|has-config|unregister) ;;
  *) echo "brokers.sh: unknown command '$command': use spread, check-empty, has-config or unregister" >&2; exit 2 ;;
esac
[ -n "$ids" ] || { echo "brokers.sh $command: no broker ids given" >&2; exit 2; }
started=$(date +%s)

if [ "$command" = has-config ]; then
  for id in $ids; do
    file="$config_dir/kafka-broker-$((id - first_id)).properties"
    if [ ! -r "$file" ]; then
      echo "refused: $file is not in the mounted ConfigMap kafka-config: the new brokers' files come with the deploy; deploy the new broker count first (the running brokers do not restart, the new ones join empty), then run this again"
      exit 3
    fi
  done
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/admin.properties" <<EOF
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
config.providers=env
config.providers.env.class=org.apache.kafka.common.config.provider.EnvVarConfigProvider
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$user" password="\${env:KAFKA_ADMIN_PASSWORD}";
EOF

# A tool JVM beside the broker's, in its container: a small heap and the serial collector
# keep it near 100 MiB resident.
java_tool() {
  java -Xmx64m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp "$home/libs/*" "$@"
}
admin_tool() {
  main=$1; shift
  java_tool "$main" --bootstrap-server "$bootstrap" --command-config "$work/admin.properties" "$@"
}
out_of_time() {
  [ $(($(date +%s) - started)) -ge "$max_wait" ]
}

# One line per partition, "P topic partition replicas moving" (moving: 1 while a
# reassignment adds or removes replicas), and "T topic" per topic with a replication
# throttle set, from kafka-topics --describe (tab-separated "Key: value" fields).
describe() {
  admin_tool org.apache.kafka.tools.TopicCommand --describe > "$work/describe.txt"
  awk -F '\t' '
  /^Topic:/ { for (i = 1; i <= NF; i++) if ($i ~ /^Configs:/ && $i ~ /replication\.throttled\.replicas=/) print "T", substr($1, 8) ; next }
  /^\t/ {
    topic = ""; part = ""; replicas = ""; moving = 0
    for (i = 1; i <= NF; i++) {
      if ($i ~ /^Topic: /) topic = substr($i, 8)
      else if ($i ~ /^Partition: /) part = substr($i, 12)
      else if ($i ~ /^Replicas: /) replicas = substr($i, 11)
      else if ($i ~ /^(Adding|Removing) Replicas: ./) moving = 1
    }
    if (topic != "") print "P", topic, part, replicas, moving
  }' "$work/describe.txt"
}

if [ "$command" = check-empty ]; then
  describe > "$work/assignment.txt"
  line=$(awk -v ids="$ids" '
  BEGIN { n = split(ids, gone, " "); for (i = 1; i <= n; i++) removing[gone[i]] = 1 }
  $1 == "P" {
    k = split($4, r, ",")
    for (j = 1; j <= k; j++) if (r[j] in removing) { held[r[j]]++; total++; if (first == "") first = $2 "-" $3 " on broker " r[j] }
  }
  END {
    if (!total) exit
    for (i = 1; i <= n; i++) if (held[gone[i]]) list = list (list == "" ? "" : ", ") gone[i] ": " held[gone[i]]
    printf "refused: brokers %s still hold %d partition replicas (%s; first %s): stopping them would drop those replicas; move them off first (brokers.sh spread onto the brokers that stay)\n", ids, total, list, first
  }' "$work/assignment.txt")
  if [ -n "$line" ]; then echo "$line"; exit 3; fi
  echo "brokers $ids hold no partition replica"
  exit 0
fi

if [ "$command" = unregister ]; then
  # A broker still running would register again: wait until none of them is listed (the
  # StatefulSet deletes them one by one, each within its grace period).
  while :; do
    listed=$(java_tool org.apache.kafka.tools.ClusterTool list-endpoints --bootstrap-server "$bootstrap" \
      --command-config "$work/admin.properties" 2>&1 || true)
    running=""
    for id in $ids; do
      if printf '%s\n' "$listed" | awk -v id="$id" '$1 == id { found = 1 } END { exit !found }'; then running="$running $id"; fi
    done
    [ -z "$running" ] && break
    if out_of_time; then echo "brokers$running still running after ${max_wait} s: scale their StatefulSet down, then run this again" >&2; exit 1; fi
    sleep 5
  done
  for id in $ids; do
    if result=$(java_tool org.apache.kafka.tools.ClusterTool unregister --bootstrap-server "$bootstrap" \
        --command-config "$work/admin.properties" --id "$id" 2>&1); then
      echo "broker $id unregistered"
    elif printf '%s' "$result" | grep -q "not currently registered"; then
      echo "broker $id already unregistered"
    else
      printf '%s\n' "$result" >&2
      echo "unregistering broker $id failed (see above); run this again" >&2
      exit 1
    fi
  done
  exit 0
fi

# spread
[ -n "$throttle" ] || { echo "brokers.sh spread: --throttle BYTES_PER_S is required" >&2; exit 2; }

# Waits until no partition is being reassigned: --verify clears the throttles (broker and
# topic level) only once none is, and it looks at every reassignment, not only the file's.
wait_done() {
  while :; do
    status=$(admin_tool org.apache.kafka.tools.reassign.ReassignPartitionsCommand --reassignment-json-file "$1" --verify)
    case $status in
      *"still in progress"*) ;;
      *) return 0 ;;
    esac
    if out_of_time; then
      echo "replicas still moving after ${max_wait} s (throttled at $throttle B/s): run this again to go on waiting" >&2
      exit 1
    fi
    sleep 5
  done
}

to_json() {  # "P topic partition replicas ..." lines on stdin -> a reassignment file
  awk 'BEGIN { printf "{\"version\":1,\"partitions\":[" }
  $1 == "P" { printf "%s{\"topic\":\"%s\",\"partition\":%s,\"replicas\":[%s]}", (n++ ? "," : ""), $2, $3, $4 }
  END { print "]}" }'
}

describe > "$work/assignment.txt"
if awk '$1 == "P" && $5 == 1 { found = 1 } END { exit !found }' "$work/assignment.txt"; then
  echo "a reassignment is in progress (an earlier run): waiting for it to complete"
  to_json < "$work/assignment.txt" > "$work/current.json"
  wait_done "$work/current.json"
  describe > "$work/assignment.txt"
fi

# The new assignment, moving as few replicas as it can: a replica on a broker not in the
# set goes to the set's broker with the fewest replicas of that topic (then overall) that
# the partition lacks; then, per topic, a replica moves from the broker with the most to
# the one with the fewest while they differ by more than one; then the same across topics,
# for moves that keep each topic's spread; last, replicas swap places within a partition
# (no data moves) to spread each topic's preferred leaders, the first replica.
awk -v ids="$ids" '
function has(p, b,   j) { for (j = 1; j <= rf[p]; j++) if (R[p, j] == b) return j; return 0 }
function put(p, j, b,   t) { t = tp[p]; c[t, R[p, j]]--; g[R[p, j]]--; R[p, j] = b; c[t, b]++; g[b]++ }
BEGIN { n = split(ids, T, " "); for (i = 1; i <= n; i++) target[T[i]] = 1 }
$1 == "P" {
  np++; tp[np] = $2; pn[np] = $3; before[np] = $4; rf[np] = split($4, r, ",")
  for (j = 1; j <= rf[np]; j++) R[np, j] = r[j]
  if (!($2 in seen)) { seen[$2] = 1; topics[++nt] = $2 }
}
END {
  for (p = 1; p <= np; p++) {
    if (rf[p] > n) {
      printf "refused: %s-%s has %d replicas and only %d brokers would remain; lower its replication factor first\n", tp[p], pn[p], rf[p], n
      exit 3
    }
    for (j = 1; j <= rf[p]; j++) { c[tp[p], R[p, j]]++; g[R[p, j]]++ }
  }
  for (p = 1; p <= np; p++) for (j = 1; j <= rf[p]; j++) {
    if (R[p, j] in target) continue
    best = ""
    for (i = 1; i <= n; i++) {
      b = T[i]
      if (has(p, b)) continue
      if (best == "" || c[tp[p], b] < c[tp[p], best] || (c[tp[p], b] == c[tp[p], best] && g[b] < g[best])) best = b
    }
    put(p, j, best)
  }
  for (k = 1; k <= nt; k++) {
    t = topics[k]
    while (1) {
      hi = T[1]; lo = T[1]
      for (i = 2; i <= n; i++) {
        b = T[i]
        if (c[t, b] > c[t, hi] || (c[t, b] == c[t, hi] && g[b] > g[hi])) hi = b
        if (c[t, b] < c[t, lo] || (c[t, b] == c[t, lo] && g[b] < g[lo])) lo = b
      }
      if (c[t, hi] - c[t, lo] <= 1) break
      moved = 0
      for (p = 1; p <= np && !moved; p++) if (tp[p] == t && (j = has(p, hi)) && !has(p, lo)) { put(p, j, lo); moved = 1 }
      if (!moved) break
    }
  }
  while (1) {
    hi = T[1]; lo = T[1]
    for (i = 2; i <= n; i++) { b = T[i]; if (g[b] > g[hi]) hi = b; if (g[b] < g[lo]) lo = b }
    if (g[hi] - g[lo] <= 1) break
    moved = 0
    for (p = 1; p <= np && !moved; p++) if ((j = has(p, hi)) && !has(p, lo) && c[tp[p], hi] > c[tp[p], lo]) { put(p, j, lo); moved = 1 }
    if (!moved) break
  }
  for (k = 1; k <= nt; k++) {
    t = topics[k]
    for (i = 1; i <= n; i++) L[T[i]] = 0
    for (p = 1; p <= np; p++) if (tp[p] == t) L[R[p, 1]]++
    while (1) {
      hi = T[1]; lo = T[1]
      for (i = 2; i <= n; i++) { b = T[i]; if (L[b] > L[hi]) hi = b; if (L[b] < L[lo]) lo = b }
      if (L[hi] - L[lo] <= 1) break
      moved = 0
      for (p = 1; p <= np && !moved; p++) if (tp[p] == t && R[p, 1] == hi && (j = has(p, lo))) {
        R[p, j] = hi; R[p, 1] = lo; L[hi]--; L[lo]++; moved = 1
      }
      if (!moved) break
    }
  }
  for (p = 1; p <= np; p++) {
    after = R[p, 1]
    for (j = 2; j <= rf[p]; j++) after = after "," R[p, j]
    print (after == before[p] ? "P" : "M"), tp[p], pn[p], after
  }
}' "$work/assignment.txt" > "$work/target.txt" || { cat "$work/target.txt"; exit 3; }

sed 's/^M /P /' "$work/target.txt" | to_json > "$work/full.json"
grep '^M ' "$work/target.txt" | sed 's/^M /P /' | to_json > "$work/plan.json"
moves=$(grep -c '^M ' "$work/target.txt" || true)
total=$(wc -l < "$work/target.txt")

if [ "$moves" -gt 0 ]; then
  echo "reassigning $moves of $total partitions onto brokers $ids, throttled at $throttle B/s"
  admin_tool org.apache.kafka.tools.reassign.ReassignPartitionsCommand --reassignment-json-file "$work/plan.json" \
    --execute --throttle "$throttle" > /dev/null
  wait_done "$work/full.json"
  # Leadership follows the new first replicas now rather than at the next automatic
  # rebalance (leader.imbalance.check.interval.seconds, 300 s by default).
  admin_tool org.apache.kafka.tools.LeaderElectionCommand --election-type PREFERRED --all-topic-partitions > /dev/null || true
elif grep -q '^T ' "$work/assignment.txt"; then
  # An earlier run stopped after its moves completed, before its throttles were cleared.
  wait_done "$work/full.json"
fi
awk '{ k = split($4, r, ","); for (j = 1; j <= k; j++) { count[r[j]]++; if (j == 1) lead[r[j]]++ } }
END { for (b in count) printf "broker %s: %d replicas, %d preferred leaders\n", b, count[b], lead[b] }' "$work/target.txt" | sort
echo "every partition's replicas are on brokers $ids ($moves of $total partitions moved)"
