"""Kafka: a KRaft cluster, durable and authenticated by default, with topics as code.

Creates, in the ``kafka`` namespace (Pod Security "restricted", default-deny):

- Secrets generated in the cluster, once: ``kafka-auth`` (``admin-password``,
  ``controller-password``, ``app-password``) and ``kafka-cluster-id`` (a Kafka cluster
  id); no value is in any manifest;
- ConfigMap ``kafka-config``: one ``server.properties`` per pod from
  :mod:`final_problem.renderers.kafka` (the renderer the real-broker tests start),
  ``log4j2.properties`` (console), the Prometheus JMX exporter's rules and the readiness
  script (:data:`READY_SCRIPT`: Ready means another node of the set may stop);
- on EKS, StatefulSets ``kafka-controller`` (``controllers`` KRaft voters) and
  ``kafka-broker`` (``brokers``); on the Pi one StatefulSet ``kafka`` of combined
  ``broker,controller`` nodes. Each is a quorum set (PDB, one pod per node, zone
  spread) with retained volumes. An init container formats storage with the cluster id,
  the SCRAM users and the pod's place in the dynamic quorum (``kafka-storage format
  --add-scram``, ``--initial-controllers`` or ``--no-initial-controllers``: its
  ``format-storage.sh``; idempotent with ``--ignore-formatted``); the container starts
  ``kafka.Kafka`` directly, with the rendered file mounted read-only (the image's wrapper
  would write ``/opt/kafka/config``);
- headless Services giving each pod the stable name it advertises, and Service
  ``kafka-bootstrap`` for clients (port 9092);
- a topic Job that waits for the brokers and reconciles the declared topics
  (:mod:`final_problem.clients.kafka_topics`);
- NetworkPolicies: clients from namespaces labelled ``final-problem.io/kafka-client:
  "true"``; replication between brokers; the controller port from nodes only; metrics
  from namespaces labelled ``final-problem.io/monitoring: "true"``.

Metrics: the image ships no Prometheus exporter, so an init container fetches the
Prometheus JMX exporter Java agent (``io.prometheus.jmx:jmx_prometheus_javaagent``) from
Maven Central onto the node's volume, once (SHA-256 checked; a restart offline reuses it),
and the JVM loads it (``-javaagent``), serving
``/metrics`` on 9404: the way the exporter's README documents ("Running the Java Agent").

Membership: ``kafka.controllers`` changes live by ``final-problem scale`` (:func:`controller_steps`:
the ConfigMap's ``quorum.sh`` runs ``kafka-metadata-quorum.sh add-controller`` /
``remove-controller`` one controller at a time); ``kafka.dynamic_quorum`` migrates a static
quorum (:func:`quorum_migration_steps`).

Sources: Kafka 4.4 docs ("KRaft", "Authentication using SASL", "Docker"); KIP-853; apache/kafka
``docker/jvm/Dockerfile``; prometheus/jmx_exporter README.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from constructs import Construct

from final_problem import sizes, versions
from final_problem.clients import kafka_topics
from final_problem.clients.kafka_topics import TopicSpec
from final_problem.components import PlatformChart, register
from final_problem.config import Settings
from final_problem.constructs.generated_secrets import GeneratedSecrets, SecretSpec
from final_problem.constructs.labels import set_component
from final_problem.constructs.namespace import (
    MONITORING_NAMESPACE_LABEL, RestrictedNamespace, namespace_peer, pod_peer, ports,
)
from final_problem.constructs.quorum import ClaimSpec, QuorumStatefulSet
from final_problem.constructs.security import Sizing, container_context, pod_context, raw_resources
from final_problem.errors import ConfigError
from final_problem.imports import int_or_string, k8s, quantity
from final_problem.profiles import Profile
from final_problem.changes import Verdict, nothing, peer_port, procedure, refused, rolling, volume_size, when_grows
from final_problem.scaling import Exec, Refused, Scale, Step, WaitReady, membership, membership_change
from final_problem.settings import ComponentSettings, per_profile, setting
from final_problem.renderers.kafka import (
    ADMIN_PASSWORD_ENV, BROKER_ID_OFFSET, BROKERS_SCRIPT, CONTROLLER_PASSWORD_ENV, LOG4J2_PROPERTIES, SERVER_MAIN,
    STORAGE_MAIN, KafkaClusterConfig, brokers_command, check_min_isr, check_topic_name, format_args, java_command,
    layout_nodes, quorum_format_args, scram_argument, server_properties,
)

#: ``appuser`` of the image: apache/kafka docker/jvm/Dockerfile runs
#: ``adduser -h /home/appuser -D --shell /bin/bash appuser`` on Alpine, whose first
#: user gets uid 1000 (and its own group 1000); ``USER appuser`` names no number.
KAFKA_UID = 1000
#: Where the image unpacks the release; ``libs/`` holds every jar.
KAFKA_HOME = "/opt/kafka"
CONFIG_DIR = "/opt/kafka-config"
#: The node's volume: Kafka's log directory and, beside it, the metrics agent, kept so a
#: restart (a Pi after a power cut, offline) needs no download.
VOLUME_DIR = "/var/lib/kafka"
DATA_DIR = f"{VOLUME_DIR}/data"
AGENT_DIR = f"{VOLUME_DIR}/metrics-agent"
CLIENT_NAMESPACE_LABEL = {"final-problem.io/kafka-client": "true"}
#: Largest heap as a share of the memory limit: Kafka serves reads from the page cache
#: and the JVM needs metaspace, thread stacks and direct buffers outside the heap.
MAX_HEAP_SHARE = 0.75
#: Controller counts allowed: odd (the Raft quorum is a majority), 3 (one failure
#: tolerated) or 5 (two). Kafka docs, "KRaft", Controller Servers.
CONTROLLERS_ALLOWED = (3, 5)
#: kafka-python for the topic Job, installed with pip --require-hashes (PyPI: the
#: py3-none-any wheel of the version requirements.txt pins).
KAFKA_PYTHON_REQUIREMENT = (
    "kafka-python==3.0.12 --hash=sha256:67add72052e3ad0c37ed9963ebe2b1696adc7f063c64eaf19862c21b69a64a18"
)
TOPICS_SCRIPT = Path(kafka_topics.__file__)
#: Partition counts already deployed: a declaration may raise them, never lower them
#: (Kafka cannot remove partitions). Raise a topic here in the same change that raises it
#: in :data:`DEFAULT_TOPICS`.
PARTITIONS_LOCK = Path(__file__).with_name("kafka-partitions.json")

#: The platform's topics. ``events``: 6 partitions (room for 6 consumers of one group),
#: a week's retention (Kafka's default ``log.retention.hours`` is 168).
DEFAULT_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(name="events", partitions=6, replication_factor=3, configs={"retention.ms": str(7 * 24 * 3600 * 1000)}),
)

#: JMX exporter rules: the broker's yammer and KRaft metrics as gauges and counters,
#: names lower-cased (prometheus/jmx_exporter example_configs/kafka-kraft-3_0_0.yml
#: follows the same pattern; these are the project's own, shorter rules).
JMX_EXPORTER_RULES = """\
lowercaseOutputName: true
lowercaseOutputLabelNames: true
rules:
  # One series per partition this broker follows, created by the first fetch response the
  # follower processes for it (AbstractFetcherThread); the readiness probe counts them.
  - pattern: 'kafka.server<type=FetcherLagMetrics, name=ConsumerLag, clientId=(.+), topic=(.+), partition=(.+)><>Value'
    name: kafka_server_fetcherlagmetrics_consumerlag
    labels: {"clientid": "$1", "topic": "$2", "partition": "$3"}
    type: GAUGE
  - pattern: 'kafka.(\\w+)<type=(.+), name=(.+)PerSec\\w*, (.+)=(.+)><>Count'
    name: kafka_$1_$2_$3
    labels: {"$4": "$5"}
    type: COUNTER
  - pattern: 'kafka.(\\w+)<type=(.+), name=(.+)PerSec\\w*><>Count'
    name: kafka_$1_$2_$3
    type: COUNTER
  - pattern: 'kafka.(\\w+)<type=(.+), name=(.+), (.+)=(.+), (.+)=(.+)><>Value'
    name: kafka_$1_$2_$3
    labels: {"$4": "$5", "$6": "$7"}
    type: GAUGE
  - pattern: 'kafka.(\\w+)<type=(.+), name=(.+), (.+)=(.+)><>Value'
    name: kafka_$1_$2_$3
    labels: {"$4": "$5"}
    type: GAUGE
  - pattern: 'kafka.(\\w+)<type=(.+), name=(.+)><>Value'
    name: kafka_$1_$2_$3
    type: GAUGE
  - pattern: 'kafka.server<type=raft-metrics><>(.+):'
    name: kafka_raft_$1
    type: GAUGE
"""


#: A restarted controller counts as caught up with the quorum once the last metadata record
#: it applied was appended at most this long ago. The active controller appends a record
#: at least every ``metadata.max.idle.interval.ms`` (500 ms by default, KIP-835), so a voter
#: that follows the log applies one at least that often; one replaying an old log, or cut
#: off, does not. 2000 ms is ``controller.quorum.fetch.timeout.ms``'s default, the bound
#: Strimzi's roller uses for "caught up" (strimzi/proposals 060-kafka-roller-kraft.md).
CONTROLLER_CAUGHT_UP_MS = 2000
#: Readiness probe timing: every 5 s (a rolling update waits for the first pass after the
#: node is back, so this adds 2.5 s per pod on average), 5 s to answer (an exporter scrape
#: of a cold JVM under a 1 CPU limit took up to 2.5 s here), unready after 3 failures in a
#: row (15 s: a broker briefly behind under load keeps its endpoint).
READY_PERIOD_S, READY_TIMEOUT_S, READY_FAILURES = 5, 5, 3
#: The probe sees a broker at the leaders' high watermark; the leaders add it to their ISRs
#: with its next fetch and an AlterPartition round trip to the controllers, so the ISR can
#: trail the first passing probe by that. minReadySeconds waits it out before the
#: StatefulSet stops the next pod. Measured here (18 restarts under a live producer, the
#: Admin API polled from the first pass): already in every ISR each time, the ISR
#: expansion landing while the probe's own scrape ran; 3 s leaves room for a slow
#: controller quorum (tests/integration/test_kafka_rollout.py checks it on every restart).
MIN_READY_S = 3
#: SIGTERM starts a controlled shutdown: the controllers move the broker's leaderships away,
#: then the logs are flushed and closed cleanly (a killed broker recovers its logs on start).
#: Measured here, SIGTERM to exit: 1.1-3.9 s (tests/integration/test_kafka_rollout.py, both
#: layouts, 6 partitions); the grace leaves room for thousands of partitions and a slow disk.
TERMINATION_GRACE_S = 120

#: The readiness probe (``sh readiness.sh METRICS_PORT ROLES CAUGHT_UP_MS``): reads the
#: node's own metrics (the JMX exporter agent, 127.0.0.1) with the image's busybox wget and
#: awk, so no JVM starts per probe. Ready means "another node of this set may stop now":
#:
#: - a broker is RUNNING (``BrokerState`` 3: registered and unfenced, so leaders may add it
#:   to their ISRs), has a fetcher state for every partition it follows (a
#:   ``FetcherLagMetrics`` series appears with the first fetch response processed for the
#:   partition), and every one of them, and ``ReplicaFetcherManager`` ``MaxLag``, is 0: its
#:   log reached the leader's high watermark, the leader's condition for the ISR
#:   (Partition.isFollowerInSync). MaxLag alone is 0 before the first fetch (it folds the
#:   per-partition lags from 0), hence the count. No failed partitions.
#: - a controller knows the quorum leader (raft ``current-leader``) and applied a metadata
#:   record appended at most CAUGHT_UP_MS ago (``LastAppliedRecordLagMs``).
#:
#: Sources: Kafka 4.4 docs "Monitoring" (BrokerState, MaxLag, KRaft monitoring metrics);
#: apache/kafka core AbstractFetcherManager.scala, AbstractFetcherThread.scala,
#: metadata QuorumControllerMetrics.java, OffsetControlManager.java.
READY_SCRIPT = r"""# Readiness of a Kafka node from its own metrics: sh readiness.sh METRICS_PORT ROLES CAUGHT_UP_MS
set -u
port=$1 roles=$2 caught_up_ms=$3
q='name%5B%5D='
url="http://127.0.0.1:$port/metrics?${q}kafka_server_kafkaserver_brokerstate"
for name in replicafetchermanager_maxlag replicafetchermanager_failedpartitionscount \
    replicamanager_partitioncount replicamanager_leadercount fetcherlagmetrics_consumerlag; do
  url="$url&${q}kafka_server_$name"
done
url="$url&${q}kafka_controller_kafkacontroller_lastappliedrecordlagms&${q}kafka_raft_current_leader"
metrics=$(wget -q -T 4 -O - "$url") || { echo "no metrics from 127.0.0.1:$port"; exit 1; }
printf '%s\n' "$metrics" | awk -v roles="$roles" -v caught_up_ms="$caught_up_ms" '
/^#/ { next }
{ name = $1; sub(/[{].*/, "", name); value = $NF + 0 }
name == "kafka_server_kafkaserver_brokerstate" { state = value }
name == "kafka_server_replicafetchermanager_maxlag" && $1 ~ /clientid="Replica"/ { maxlag = value; has_maxlag = 1 }
name == "kafka_server_replicafetchermanager_failedpartitionscount" && $1 ~ /clientid="Replica"/ { failed = value }
name == "kafka_server_replicamanager_partitioncount" { partitions = value }
name == "kafka_server_replicamanager_leadercount" { leaders = value }
name == "kafka_server_fetcherlagmetrics_consumerlag" && $1 ~ /clientid="ReplicaFetcherThread/ {
  fetched++; if (value != 0) behind++
}
name == "kafka_controller_kafkacontroller_lastappliedrecordlagms" { applied_lag = value; has_applied = 1 }
name == "kafka_raft_current_leader" { leader = value; has_leader = 1 }
END {
  why = ""
  if (roles ~ /broker/) {
    if (state != 3) why = why "; broker state " (state == "" ? "unknown" : state) ", not 3 (RUNNING)"
    following = partitions - leaders
    if (fetched + 0 != following) why = why "; fetching " fetched + 0 " of the " following " partitions it follows"
    if (behind + 0 > 0) why = why "; " behind " followed partitions behind the high watermark"
    if (!has_maxlag || maxlag != 0) why = why "; replica MaxLag " (has_maxlag ? maxlag : "unknown")
    if (failed + 0 > 0) why = why "; " failed " failed partitions"
  }
  if (roles ~ /controller/) {
    if (!has_leader || leader < 0) why = why "; no known quorum leader"
    if (!has_applied || applied_lag > caught_up_ms)
      why = why "; last applied metadata record " (has_applied ? applied_lag " ms" : "unknown") " old, over " caught_up_ms " ms"
  }
  if (why != "") { print "not ready" why; exit 1 }
}'
"""


#: The format-storage init container's wrapper (``sh format-storage.sh COMMAND...``): runs
#: the storage tool's ``format`` with this pod's quorum arguments, one a line in
#: ``$POD_NAME.quorum`` beside it (:func:`~final_problem.renderers.kafka.quorum_format_args`:
#: ``--initial-controllers`` on the first voters, ``--no-initial-controllers`` on a controller
#: that joins later; a broker has no file). ``--ignore-formatted`` makes every later start a
#: no-op, so those files are read once per volume and a change to them rolls no pod.
FORMAT_SCRIPT = r"""# Format this pod's storage with its quorum arguments: sh format-storage.sh COMMAND...
set -eu
flags="$(dirname "$0")/$POD_NAME.quorum"
if [ -r "$flags" ]; then
  while IFS= read -r arg || [ -n "$arg" ]; do
    set -- "$@" "$arg"
  done < "$flags"
fi
exec "$@"
"""

#: Membership of the pod's own controller in the dynamic quorum (KIP-853), run in the
#: controller's container by ``final-problem scale kafka.controllers=N`` (``sh quorum.sh
#: COMMAND CAUGHT_UP_MS MIN_VOTERS``), each command safe to repeat:
#:
#: - ``add``: waits until this controller, an observer, is caught up with the leader
#:   (``describe --replication``: its last caught-up time within CAUGHT_UP_MS of the
#:   leader's clock) and the voters caught up with it would be a majority of the larger set,
#:   then ``add-controller`` with the node's own file (the tool reads its id, endpoint and
#:   the directory id of its metadata log), and waits until it is listed as a voter;
#: - ``remove``: refuses unless the voters left are at least MIN_VOTERS and those caught up
#:   are a majority of them, then ``remove-controller`` with its id and directory id, and
#:   waits until it is no longer a voter (a leader that removes itself resigns once the
#:   new set is committed);
#: - ``status``: ``describe --status``; ``upgrade``: ``kraft.version`` to 1 (the migration
#:   of a static quorum: Kafka 4.4 docs, "KRaft", Upgrade).
#:
#: The tools reach the controllers given in the node's own file, authenticated as the node
#: is (its controller listener's JAAS entry; the password stays ``${env:...}``). Sources:
#: Kafka 4.4 docs, "KRaft" (Controller membership changes, Debugging); KIP-853.
QUORUM_SCRIPT = r"""# Membership of this controller in the KRaft quorum: sh quorum.sh add|remove|status|upgrade CAUGHT_UP_MS MIN_VOTERS
set -u
command=${1:-} caught_up_ms=${2:-2000} min_voters=${3:-3}
config=${KAFKA_NODE_CONFIG:-/opt/kafka-config/${POD_NAME:-}.properties}
home=${KAFKA_HOME:-/opt/kafka}
wait_s=${QUORUM_WAIT_S:-600}
die() { echo "quorum.sh $command: $*" >&2; exit 1; }
prop() { sed -n "s/^$1=//p" "$config" | tail -n 1; }
[ -r "$config" ] || die "no node file $config: run it in a controller pod (or name the file in KAFKA_NODE_CONFIG)"
node_id=$(prop node.id)
bootstrap=$(prop controller.quorum.bootstrap.servers)
[ -n "$bootstrap" ] || bootstrap=$(prop controller.quorum.voters | sed 's/[0-9]*@//g')
listener=$(prop controller.listener.names | cut -d, -f1 | tr '[:upper:]' '[:lower:]')
mechanism=$(prop sasl.mechanism.controller.protocol | tr '[:upper:]' '[:lower:]')
logdir=$(prop metadata.log.dir)
[ -n "$logdir" ] || logdir=$(prop log.dirs | cut -d, -f1)
client=$(mktemp "${TMPDIR:-/tmp}/quorum.XXXXXX") || die "cannot write a file in ${TMPDIR:-/tmp}"
trap 'rm -f "$client"' EXIT
{
  cat "$config"
  echo "security.protocol=SASL_PLAINTEXT"
  echo "sasl.mechanism=$(prop sasl.mechanism.controller.protocol)"
  echo "sasl.jaas.config=$(prop "listener.name.$listener.$mechanism.sasl.jaas.config")"
} > "$client"
tool() {
  main=$1
  shift
  java -Xmx128m -XX:+UseSerialGC -cp "$home/libs/*" "org.apache.kafka.tools.$main" \
    --bootstrap-controller "$bootstrap" --command-config "$client" "$@"
}
my_dir() { sed -n 's/^directory\.id=//p' "$logdir/meta.properties" 2>/dev/null; }
# One line: this node's status (Leader, Follower, Observer or absent), whether it is caught
# up (1/0), the voters, and the voters other than this node that are caught up.
summary() {
  tool MetadataQuorumCommand describe --replication 2>/dev/null | awk -v id="$node_id" -v dir="$1" -v ms="$caught_up_ms" '
  $1 == "NodeId" { for (i = 1; i <= NF; i++) col[$i] = i; next }
  !("Status" in col) || NF < col["Status"] { next }
  {
    n++; rid[n] = $col["NodeId"]; rdir[n] = $col["DirectoryId"]; st[n] = $col["Status"]
    fetch = $col["LastFetchTimestamp"] + 0; caught[n] = $col["LastCaughtUpTimestamp"] + 0
    if (fetch > now) now = fetch
  }
  END {
    if (n == 0) exit 1
    me = "absent"; me_caught = 0; voters = 0; others = 0
    for (i = 1; i <= n; i++) {
      ok = (st[i] == "Leader" || now - caught[i] <= ms)
      if (rid[i] == id && rdir[i] == dir) { me = st[i]; me_caught = ok }
      if (st[i] == "Leader" || st[i] == "Follower") {
        voters++
        if (ok && !(rid[i] == id && rdir[i] == dir)) others++
      }
    }
    print me, me_caught, voters, others
  }'
}
until_deadline() { [ "$(date +%s)" -lt "$deadline" ]; }
deadline=$(( $(date +%s) + wait_s ))
case "$command" in
status)
  tool MetadataQuorumCommand describe --status
  ;;
upgrade)
  level=$(tool FeatureCommand describe 2>/dev/null | awk '$2 == "kraft.version" { for (i = 1; i < NF; i++) if ($i == "FinalizedVersionLevel:") print $(i + 1) }')
  if [ "${level:-0}" -ge 1 ]; then echo "kraft.version is already $level: the quorum is dynamic"; exit 0; fi
  tool FeatureCommand upgrade --feature kraft.version=1 || die "kraft.version 0 -> 1 failed (every controller must run Kafka 4.1 or later)"
  ;;
add)
  dir=$(my_dir)
  [ -n "$dir" ] || die "node $node_id has no formatted metadata log in $logdir: wait until its pod has started"
  why="no answer from the controllers $bootstrap"
  while :; do
    if line=$(summary "$dir"); then
      read -r me me_caught voters others <<EOT
$line
EOT
      case "$me" in
      Leader|Follower) echo "controller $node_id ($dir) is a voter of $voters"; exit 0 ;;
      esac
      majority=$(( (voters + 1) / 2 + 1 ))
      if [ "$me" != "Observer" ]; then
        why="controller $node_id ($dir) does not fetch from the leader yet"
      elif [ "$me_caught" != 1 ]; then
        why="controller $node_id is not caught up with the leader"
      elif [ $(( others + 1 )) -lt "$majority" ]; then
        why="only $others of the $voters voters are caught up: with controller $node_id they would be fewer than a majority ($majority) of $(( voters + 1 )); bring the others back first"
      elif tool MetadataQuorumCommand add-controller >/dev/null 2>&1; then
        why="controller $node_id added, not yet listed as a voter"
      else
        why="add-controller of $node_id was refused (the leader may still be committing an earlier change)"
      fi
    fi
    until_deadline || break
    sleep 2
  done
  die "$why after ${wait_s} s; fix it, then run it again"
  ;;
remove)
  dir=$(my_dir)
  [ -n "$dir" ] || die "node $node_id has no formatted metadata log in $logdir"
  why="no answer from the controllers $bootstrap"
  removing=0
  while :; do
    if line=$(summary "$dir"); then
      read -r me _ voters others <<EOT
$line
EOT
      case "$me" in
      Leader|Follower) ;;
      *) echo "controller $node_id ($dir) is not a voter: $voters voters"; exit 0 ;;
      esac
      left=$(( voters - 1 ))
      majority=$(( left / 2 + 1 ))
      if [ "$removing" = 1 ]; then
        why="controller $node_id removed, still listed as a voter"
      elif [ "$left" -lt "$min_voters" ]; then
        die "removing controller $node_id would leave $left voters, fewer than $min_voters; keep it"
      elif [ "$others" -lt "$majority" ]; then
        why="only $others of the other $left voters are caught up, fewer than a majority ($majority) of them; bring them back first"
      elif tool MetadataQuorumCommand remove-controller --controller-id "$node_id" --controller-directory-id "$dir" >/dev/null 2>&1; then
        removing=1
        why="controller $node_id removed, still listed as a voter"
      else
        why="remove-controller of $node_id was refused (the leader may still be committing an earlier change)"
      fi
    fi
    until_deadline || break
    sleep 2
  done
  die "$why after ${wait_s} s; fix it, then run it again"
  ;;
*)
  die "unknown command; use add, remove, status or upgrade"
  ;;
esac
"""

def _read_lock() -> dict[str, int]:
    return {str(k): int(v) for k, v in json.loads(PARTITIONS_LOCK.read_text()).items()}


def topics_change(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> Verdict:
    """The change rule of the declared topics (recorded as ``{name: {partitions,
    replication_factor, configs}}``), applied by the topic Job on deploy: fewer partitions
    are refused ("Kafka does not currently support reducing the number of partitions for a
    topic": Kafka docs, Operations, "Modifying topics"); more partitions need a procedure
    (a key maps to another partition from then on, so per-key order breaks across the
    change: same section); a new replication factor too (the Job leaves it, a reassignment
    changes it); configs, new topics and dropped ones change nothing that runs."""
    old, new = dict(old or {}), dict(new or {})
    verdicts: list[Verdict] = []
    for name in sorted(set(old) & set(new)):
        before, after = old[name], new[name]
        if after["partitions"] < before["partitions"]:
            verdicts.append(refused(
                f"topic {name}: {before['partitions']} -> {after['partitions']} partitions: Kafka cannot remove partitions",
                f"declare {before['partitions']} or more partitions for {name}; fewer means a new topic and moving its data"))
        elif after["partitions"] > before["partitions"]:
            verdicts.append(procedure(
                f"topic {name}: {before['partitions']} -> {after['partitions']} partitions: keyed records map to other "
                "partitions from then on, so per-key order breaks across the change",
                f"let consumers of {name} catch up and pause keyed producers, deploy (the topic Job adds the partitions), "
                f"then raise {name} in kafka-partitions.json"))
        if after["replication_factor"] != before["replication_factor"]:
            verdicts.append(procedure(
                f"topic {name}: replication factor {before['replication_factor']} -> {after['replication_factor']}: the "
                "topic Job leaves an existing topic's replicas as they are",
                f"reassign {name}'s replicas with kafka-reassign-partitions.sh (a plan with the new replica lists)"))
        if after.get("configs") != before.get("configs") and not verdicts:
            verdicts.append(nothing(f"topic {name}: the topic Job sets its declared configs"))
    for name in sorted(set(new) - set(old)):
        verdicts.append(nothing(f"topic {name}: the topic Job creates it"))
    for name in sorted(set(old) - set(new)):
        verdicts.append(nothing(f"topic {name}: no longer declared; the topic Job leaves it (kafka-topics.sh --delete "
                                "deletes it)"))
    if not verdicts:
        return nothing("the declared topics are unchanged")
    worst = max(v.effect for v in verdicts)
    chosen = [v for v in verdicts if v.effect == worst]
    return Verdict(worst, "; ".join(v.reason for v in chosen), "; ".join(v.fix for v in chosen if v.fix))


def quorum_change(old: bool | None, new: bool | None) -> Verdict:
    """The change rule of ``dynamic_quorum`` (unset on a deployment recorded before it existed,
    whose quorum is static). Static to dynamic is the documented migration (Kafka 4.4 docs,
    "KRaft", Upgrade; KAFKA-16538, Kafka 4.1): ``kraft.version`` upgraded to 1 first, with the
    static voters still configured, then every node restarted onto
    ``controller.quorum.bootstrap.servers``; the other order strands the nodes (formatted
    without a voter set, they find none). Back to static is refused: ``kraft.version`` cannot
    be downgraded."""
    if bool(new) == bool(old):
        return nothing("the quorum stays as it is")
    if new:
        return membership_change(
            "kafka", "dynamic_quorum",
            "the deployed quorum is static (kraft.version 0): nodes restarted onto controller.quorum.bootstrap.servers "
            "before kraft.version is 1 find no voter set; `scale` upgrades kraft.version (kafka-features), then the deploy "
            "restarts every node onto the bootstrap servers")
    return refused("kraft.version cannot go back from 1 to 0: the voter set lives in the metadata log",
                   "keep {name}=true")


@dataclass(frozen=True, kw_only=True)
class KafkaProps(ComponentSettings):
    """Settings of the cluster (section ``kafka``); defaults per profile."""

    controllers: int = setting(
        3, choices=CONTROLLERS_ALLOWED,
        doc="KRaft controllers (voters): the quorum is a majority, so an even count tolerates no more failures "
            "than the odd one below it, 1 tolerates none, and more voters slow every metadata commit. 5 need 5 "
            "nodes (one controller per node).",
        change=membership_change(
            "kafka", "controllers",
            "voters join and leave a dynamic quorum one at a time through the quorum itself (kafka-metadata-quorum.sh "
            "add-controller / remove-controller, KIP-853), never by a deploy; refused on the Pi's combined nodes and "
            "on a static quorum (kafka.dynamic_quorum)"),
    )
    dynamic_quorum: bool = setting(
        True,
        doc="A dynamic KRaft quorum (KIP-853, kraft.version 1): nodes find the controllers through "
            "controller.quorum.bootstrap.servers and the voter set lives in the metadata log, so `controllers` "
            "changes on a live cluster. false: the static controller.quorum.voters of a cluster formatted before.",
        change=quorum_change,
    )
    brokers: int = setting(
        3, minimum=3, maximum=99, doc="Dedicated brokers, odd (they run as a quorum set); ignored when combined.",
        change=when_grows(
            # The new brokers' server files come with the deploy (one per pod in kafka-config),
            # so growing deploys first; the brokers running keep their files and do not restart.
            procedure("new brokers join empty: partitions stay where they are until reassigned (throttled "
                      "kafka-reassign-partitions.sh, by the scale command)",
                      "deploy first (the new brokers start empty, the running ones do not restart), then run "
                      "`final-problem scale {name}={new} --apply` to spread the partitions over every broker"),
            membership_change("kafka", "brokers",
                              "the removed brokers' replicas would be lost from their partitions: they move off first "
                              "(throttled kafka-reassign-partitions.sh), then the brokers stop and are unregistered")),
    )
    reassignment_throttle_mib_s: int = setting(
        40, minimum=1, maximum=10_000,
        doc="Replication throttle of the partition moves `final-problem scale kafka.brokers` makes, per broker, in "
            "and out: a third of a gp3 volume's 125 MiB/s baseline, so producers and followers keep the rest.",
        change=nothing("read by `final-problem scale kafka.brokers` when it moves replicas"),
    )
    combined: bool = setting(
        per_profile(eks=False, pi=True),
        doc="Every node is broker and controller (`controllers` nodes): less memory, less isolation (README, Pi trade-offs).",
        change=refused("switches between one set of combined nodes and separate controller and broker sets: the new pods "
                        "start on new, empty volumes with a new metadata quorum",
                        "keep {name}={old}; another layout is a new cluster: mirror the topics into it (MirrorMaker 2) and deploy "
                        "with ALLOW_REBUILD=1"),
    )
    replication_factor: int = setting(
        3, minimum=1, maximum=100, doc="Replicas of topics created without a factor and of internal topics; at most the broker count.",
        change=rolling("the default of topics created later and of internal topics, read at start; existing topics keep theirs"),
    )
    min_insync_replicas: int = setting(
        2, minimum=1, maximum=99,
        doc="Replicas that must acknowledge an acks=all write, cluster-wide; below replication_factor, so one broker "
            "may be down and writes go on.",
        change=rolling("a broker default read at start: nodes restart one at a time"),
    )
    num_partitions: int = setting(
        3, minimum=1, maximum=10_000, doc="Partitions of a topic created without a count.",
        change=rolling("the default of topics created later, read at start; existing topics keep their count"),
    )
    controller_memory_mib: int = setting(
        sizes.default("kafka_controller"), minimum=256, maximum=65_536,
        doc="Memory request and limit of a dedicated controller.",
        change=rolling("the controllers' memory limit: they restart one at a time, a quorum kept"),
    )
    broker_memory_mib: int = setting(
        sizes.default("kafka_broker"), minimum=256, maximum=262_144,
        doc="Memory request and limit of a broker (or combined node); what the heap leaves is page cache.",
        change=rolling("the brokers' memory limit: they restart one at a time (PDB maxUnavailable 1)"),
    )
    controller_heap_mib: int | None = setting(
        default_doc="half of controller_memory_mib", minimum=128, maximum=49_152,
        doc="JVM heap of a controller, below 75% of its memory.",
        change=rolling("the controllers' JVM heap"),
    )
    broker_heap_mib: int | None = setting(
        default_doc="half of broker_memory_mib", minimum=128, maximum=196_608,
        doc="JVM heap of a broker or combined node, below 75% of its memory.",
        change=rolling("the brokers' JVM heap"),
    )
    broker_session_timeout_ms: int = setting(
        per_profile(eks=3000, pi=6000), minimum=1000, maximum=60_000,
        doc="Heartbeats a broker may miss for this long before the controllers fence it and its partitions get "
            "new leaders: shorter means a dead broker stops acks=all writes for less time, but a live broker "
            "paused longer than this (a GC or CPU-throttling stall, an SD card stall on a Pi) is fenced too and "
            "its leaders move (README, \"Kafka failover\").",
        change=rolling("a controller setting read at start"),
    )
    broker_heartbeat_interval_ms: int = setting(
        per_profile(eks=500, pi=1000), minimum=100, maximum=30_000,
        doc="How often a broker heartbeats to the controllers: a sixth of the session, so a few lost "
            "heartbeats do not fence it.",
        change=rolling("a broker setting read at start"),
    )
    fsync_every_write: bool = setting(
        per_profile(eks=False, pi=True),
        doc="Fsync each partition's log on every append (`log.flush.interval.messages=1`), so an acks=all write is "
            "on disk on every in-sync replica when it is acknowledged and survives every node losing power at once. "
            "Off, Kafka's default, an acknowledged write is in the replicas' page cache and a power cut of every "
            "node loses the last seconds (README, \"Power cut\"); on EKS the brokers sit in three zones.",
        change=rolling("log.flush.interval.messages, read at start"),
    )
    broker_storage_gib: int = setting(
        per_profile(eks=20, pi=5), minimum=1, maximum=65_536, doc="Volume of each broker (partitions).",
        change=volume_size("each broker's volume"),
    )
    controller_storage_gib: int = setting(
        2, minimum=1, maximum=1024, doc="Volume of each dedicated controller (metadata log).",
        change=volume_size("each controller's volume"),
    )
    client_port: int = setting(
        9092, minimum=1024, maximum=65_535, doc="Client listener (SASL/SCRAM).",
        change=rolling("the client listener moves; clients must use the new port"),
    )
    controller_port: int = setting(
        9093, minimum=1024, maximum=65_535, doc="Controller listener (SASL/PLAIN).",
        change=peer_port("the controllers' voter endpoints"),
    )
    replication_port: int = setting(
        9094, minimum=1024, maximum=65_535, doc="Broker-to-broker listener (SASL/SCRAM).",
        change=rolling("brokers advertise the new replication listener in their registration as they restart"),
    )
    metrics_port: int = setting(
        9404, minimum=1024, maximum=65_535, doc="Prometheus metrics (JMX exporter agent).",
        change=rolling("the metrics agent's port"),
    )
    #: Declared topics, applied by the topic Job (set in code: ``KafkaProps.for_profile(p, topics=...)``).
    topics: tuple[TopicSpec, ...] = DEFAULT_TOPICS
    #: Partition counts already deployed (:data:`PARTITIONS_LOCK`).
    partitions_lock: Mapping[str, int] = field(default_factory=_read_lock)

    change_rules = {"topics": topics_change}

    def recorded_values(self) -> dict[str, Any]:
        return {**super().recorded_values(), "topics": {
            t.name: {"partitions": t.partitions, "replication_factor": t.replication_factor, "configs": dict(t.configs)}
            for t in self.topics
        }}

    def check(self) -> None:
        if not self.combined and (self.brokers < 3 or self.brokers % 2 == 0):
            raise self.error(
                "brokers", "must be odd and at least 3: brokers run as a quorum set (one per node, a PDB, zone "
                "spread), which places odd sets, and 3 replicas need 3 brokers",
                f"set kafka.brokers={max(3, self.brokers + 1 if self.brokers % 2 == 0 else 3)}")
        if self.replication_factor > self.broker_count:
            raise self.error(
                "replication_factor", f"above the broker count ({self.broker_count}): no topic could be created",
                f"set kafka.replication_factor={self.broker_count}")
        check_min_isr(self.min_insync_replicas, self.replication_factor)
        self._check_topics()
        for role in ("controller", "broker"):
            self.check_jvm_heap(f"{role}_heap_mib", f"{role}_memory_mib", max_share=MAX_HEAP_SHARE)
        self.check_distinct_ports("client_port", "controller_port", "replication_port", "metrics_port")
        # The renderer checks the cluster as a whole (ids, voters, durability) the same way.
        self.cluster_config(namespace="kafka")

    def _check_topics(self) -> None:
        # Kafka refuses a topic whose name equals another's with '.' and '_' swapped
        # (they would share metric names), so those count as duplicates too.
        seen: set[str] = set()
        for t in self.topics:
            check_topic_name(t.name)
            key = t.name.replace(".", "_")
            if key in seen:
                raise ConfigError("kafka.topics", t.name, "declared twice (or collides with a name differing only in '.' and '_')",
                                  "declare each topic once")
            seen.add(key)
            if t.partitions < 1:
                raise ConfigError(f"kafka.topics.{t.name}.partitions", t.partitions, "a topic needs at least one partition", "use 1 or more")
            floor = self.partitions_lock.get(t.name, 0)
            if t.partitions < floor:
                raise ConfigError(
                    f"kafka.topics.{t.name}.partitions", t.partitions,
                    f"below the {floor} partitions already deployed: Kafka cannot remove partitions",
                    f"declare {floor} or more",
                )
            if not 1 <= t.replication_factor <= self.broker_count:
                raise ConfigError(
                    f"kafka.topics.{t.name}.replication_factor", t.replication_factor,
                    f"must be 1 to the broker count ({self.broker_count})", f"use {min(3, self.broker_count)}",
                )
            if "min.insync.replicas" in t.configs:
                check_min_isr(int(t.configs["min.insync.replicas"]), t.replication_factor,
                              setting=f"kafka.topics.{t.name}.min.insync.replicas")

    @property
    def broker_count(self) -> int:
        return self.controllers if self.combined else self.brokers

    @property
    def controller_heap(self) -> int:
        return self.controller_heap_mib or self.controller_memory_mib // 2

    @property
    def broker_heap(self) -> int:
        return self.broker_heap_mib or self.broker_memory_mib // 2

    @property
    def controller_sizing(self) -> Sizing:
        return sizes.sizing("kafka_controller", self.profile, self.controller_memory_mib)

    @property
    def broker_sizing(self) -> Sizing:
        return sizes.sizing("kafka_broker", self.profile, self.broker_memory_mib)

    def cluster_config(self, *, namespace: str, **overrides: Any) -> KafkaClusterConfig:
        """The rendered cluster: nodes named as the chart's pods in ``namespace``."""

        def place(kind: str, ordinal: int) -> dict[str, Any]:
            name, service = KafkaChart.workload(kind)
            return {"host": f"{name}-{ordinal}.{service}.{namespace}.svc.cluster.local",
                    "client_port": self.client_port, "controller_port": self.controller_port,
                    "replication_port": self.replication_port}

        # A dynamic quorum of dedicated controllers renders a file for every controller a
        # scale may add (the pods `final-problem scale` starts before the deploy read theirs),
        # and lists in every file the controllers each allowed count keeps: the files do not
        # change with the count.
        spare = self.dynamic_quorum and not self.combined
        nodes = layout_nodes(controllers=max(CONTROLLERS_ALLOWED) if spare else self.controllers, brokers=self.brokers,
                             combined=self.combined, place=place)
        return self.with_durability(
            KafkaClusterConfig(nodes=nodes, log_dir=DATA_DIR, voters=self.controllers,
                               bootstrap_controllers=min(CONTROLLERS_ALLOWED) if spare else None), **overrides)

    def with_durability(self, config: KafkaClusterConfig, **overrides: Any) -> KafkaClusterConfig:
        """``config`` with these props' durability settings (the local launcher uses this too)."""
        return replace(config, default_replication_factor=self.replication_factor,
                       min_insync_replicas=self.min_insync_replicas, num_partitions=self.num_partitions,
                       broker_session_timeout_ms=self.broker_session_timeout_ms,
                       broker_heartbeat_interval_ms=self.broker_heartbeat_interval_ms,
                       broker_heap_mib=self.broker_heap, flush_interval_messages=1 if self.fsync_every_write else None,
                       dynamic_quorum=self.dynamic_quorum, **self.thread_counts, **overrides)

    @property
    def thread_counts(self) -> dict[str, int | None]:
        """Network and request-handler threads of a broker: Kafka's defaults (3 and 8)
        assume several cores; a Pi node's 1 CPU limit runs 2 and 4 (each idle thread
        still costs a stack and wake-ups)."""
        if self.profile.small:
            return {"network_threads": 2, "io_threads": 4}
        return {"network_threads": None, "io_threads": None}


#: The scripts' files in the ConfigMap (mounted at CONFIG_DIR).
READY_SCRIPT_NAME = "readiness.sh"
#: The brokers' membership script's file in the ConfigMap
#: (:data:`~final_problem.renderers.kafka.BROKERS_SCRIPT`).
BROKERS_SCRIPT_NAME = "brokers.sh"
FORMAT_SCRIPT_NAME = "format-storage.sh"
QUORUM_SCRIPT_NAME = "quorum.sh"
_ROLES = {"controller": "controller", "broker": "broker", "combined": "broker,controller"}


def readiness_command(kind: str, metrics_port: int) -> list[str]:
    """The readiness probe's command for a pod of ``kind`` (``controller``, ``broker`` or
    ``combined``)."""
    return ["sh", f"{CONFIG_DIR}/{READY_SCRIPT_NAME}", str(metrics_port), _ROLES[kind], str(CONTROLLER_CAUGHT_UP_MS)]


def _value(settings: Any, name: str) -> Any:
    """A setting of the kafka section: from its props, or from a recorded mapping (a deployment
    recorded before ``name`` existed has none)."""
    return settings.get(name) if isinstance(settings, Mapping) else getattr(settings, name, None)


def quorum_step(pod: str, command: str, why: str, namespace: str, *, inline: bool = False) -> Exec:
    """``quorum.sh COMMAND`` in pod ``pod``'s kafka container; ``inline``: the script's text
    itself (``sh -c``), for pods whose ConfigMap predates it."""
    args = (command, str(CONTROLLER_CAUGHT_UP_MS), str(min(CONTROLLERS_ALLOWED)))
    script = ("sh", "-c", QUORUM_SCRIPT, QUORUM_SCRIPT_NAME) if inline else ("sh", f"{CONFIG_DIR}/{QUORUM_SCRIPT_NAME}")
    return Exec(pod=pod, container="kafka", command=(*script, *args), why=why, namespace=namespace)


@membership("kafka", "controllers")
def controller_steps(old: Any, new: Any, namespace: str) -> list[Step]:
    """Grow or shrink the dynamic quorum one controller at a time (Kafka 4.4 docs, "KRaft",
    Controller membership changes): a new controller pod (the StatefulSet's next ordinal)
    formats as an observer, catches up, then joins the voters (``quorum.sh add``); leaving,
    the highest ordinal is removed from the voters first (``quorum.sh remove``, with its
    directory id), then its pod stops (its volume is retained). Each ``quorum.sh`` step
    refuses at run time to leave the voters caught up fewer than a majority."""
    before, after = int(_value(old, "controllers")), int(_value(new, "controllers"))
    change = f"kafka.controllers {before} -> {after}"
    if before == after:
        return []
    if _value(old, "combined") or _value(new, "combined"):
        raise Refused(f"{change}: on the Pi every node is a broker and a voter, one per Pi: a node more needs a Pi more, "
                      "and a node less takes a broker's replicas with it; keep kafka.controllers=" + str(before))
    if not _value(old, "dynamic_quorum"):
        raise Refused(f"{change}: the deployed quorum is static (controller.quorum.voters, kraft.version 0), its voters "
                      "cannot change; migrate first: `final-problem scale kafka.dynamic_quorum=true --apply`, deploy, "
                      "then scale the controllers")
    if after < min(CONTROLLERS_ALLOWED) or after % 2 == 0:
        raise Refused(f"{change}: the quorum is a majority of the voters, and {after} tolerates no more failures than "
                      f"{after - 1 if after % 2 == 0 else 'none'}; use one of {', '.join(map(str, CONTROLLERS_ALLOWED))}")
    name, _ = KafkaChart.workload("controller")
    steps: list[Step] = []
    for ordinal in range(before, after):
        pod = f"{name}-{ordinal}"
        steps += [
            Scale(name, ordinal + 1, f"start {pod}: it formats with --no-initial-controllers and joins as an observer",
                  namespace),
            WaitReady(name, ordinal + 1, f"{pod} follows the quorum leader and applies the metadata log", namespace),
            quorum_step(pod, "add", f"add {pod} to the voters once caught up, a majority caught up with it", namespace),
        ]
    for ordinal in range(before - 1, after - 1, -1):
        pod = f"{name}-{ordinal}"
        steps += [
            quorum_step(pod, "remove", f"remove {pod} (its id and directory id) from the voters while the others "
                                       "caught up stay a majority", namespace),
            Scale(name, ordinal, f"stop {pod}, no longer a voter (its volume is retained)", namespace),
        ]
    return steps


@membership("kafka", "dynamic_quorum")
def quorum_migration_steps(old: Any, new: Any, namespace: str) -> list[Step]:
    """Static to dynamic quorum: ``kraft.version`` 0 -> 1 while every node still has its
    static voters (Kafka 4.4 docs, "KRaft", Upgrade); the deploy then moves every node onto
    ``controller.quorum.bootstrap.servers``. Run inline: the deployed ConfigMap may predate
    ``quorum.sh``."""
    before, after = bool(_value(old, "dynamic_quorum")), bool(_value(new, "dynamic_quorum"))
    if before == after:
        return []
    if not after:
        raise Refused("kafka.dynamic_quorum true -> false: kraft.version cannot go back from 1 to 0 (the voter set lives "
                      "in the metadata log); keep kafka.dynamic_quorum=true")
    name, _ = KafkaChart.workload("combined" if _value(old, "combined") else "controller")
    return [quorum_step(f"{name}-0", "upgrade", "kraft.version 0 -> 1 (every controller on Kafka 4.1 or later); then "
                                                "deploy: every node restarts onto controller.quorum.bootstrap.servers",
                        namespace, inline=True)]


def _secret_env(name: str, secret: str, key: str) -> k8s.EnvVar:
    return k8s.EnvVar(name=name, value_from=k8s.EnvVarSource(
        secret_key_ref=k8s.SecretKeySelector(name=secret, key=key)))




_FETCH_AGENT = """\
import hashlib, os, sys, urllib.request
url, digest, target = sys.argv[1:4]
def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
if os.path.exists(target) and sha256(target) == digest:
    sys.exit(0)
os.makedirs(os.path.dirname(target), exist_ok=True)
data = urllib.request.urlopen(url, timeout=60).read()
if hashlib.sha256(data).hexdigest() != digest:
    sys.exit(f"{url}: SHA-256 mismatch")
with open(target + ".part", "wb") as f:
    f.write(data)
os.replace(target + ".part", target)
"""


@register
class KafkaChart(PlatformChart):
    """A KRaft Kafka cluster with SCRAM authentication, durable defaults and topics as code."""

    component = "kafka"
    construct_id = "Kafka"
    requires = ("base",)
    version = versions.KAFKA_VERSION
    # Supported upgrade paths of the images its pods run (final_problem/versions.py).
    upgrade_paths = versions.upgrade_paths(versions.KAFKA_IMAGE, versions.PYTHON_IMAGE)
    settings_class = KafkaProps
    images = (versions.KAFKA_IMAGE, versions.PYTHON_IMAGE)

    NAMESPACE = "kafka"
    AUTH_SECRET = "kafka-auth"
    AUTH_KEYS = ("admin-password", "controller-password", "app-password")
    CLUSTER_ID_SECRET = "kafka-cluster-id"
    BOOTSTRAP_SERVICE = "kafka-bootstrap"
    #: SCRAM users bootstrapped at format time: ``admin`` (replication, the topic Job)
    #: and ``app`` (applications; ``final_problem.clients.kafka``).
    APP_USER = "app"

    @staticmethod
    def workload(kind: str) -> tuple[str, str]:
        """StatefulSet and headless Service names of ``controller``, ``broker`` or ``combined``."""
        name = {"controller": "kafka-controller", "broker": "kafka-broker", "combined": "kafka"}[kind]
        return name, f"{name}-headless"

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: Settings,
        profile: Profile,
        dependencies: Mapping[str, PlatformChart],
    ) -> None:
        super().__init__(scope, id, settings=settings, profile=profile, dependencies=dependencies)
        p: KafkaProps = self.props  # type: ignore[assignment]
        ns = self.NAMESPACE
        self.kafka_namespace = RestrictedNamespace(self, "Namespace", name=ns, pss_version=f"v{settings.kubernetes_version}")
        self.secrets = GeneratedSecrets(
            self, "Secrets", namespace=ns, labels=self.label_set,
            secrets=[
                SecretSpec(name=self.AUTH_SECRET, keys=self.AUTH_KEYS),
                SecretSpec(name=self.CLUSTER_ID_SECRET, keys=("cluster-id",), bytes=16, format="kafka-uuid"),
            ],
        )
        self.cluster = p.cluster_config(namespace=ns)
        #: Bootstrap address for clients inside the cluster.
        self.bootstrap_servers = f"{self.BOOTSTRAP_SERVICE}.{ns}.svc:{p.client_port}"
        self.client_namespace_label = dict(CLIENT_NAMESPACE_LABEL)

        shared = {"log4j2.properties": LOG4J2_PROPERTIES, "jmx-exporter.yaml": JMX_EXPORTER_RULES,
                  READY_SCRIPT_NAME: READY_SCRIPT, FORMAT_SCRIPT_NAME: FORMAT_SCRIPT, QUORUM_SCRIPT_NAME: QUORUM_SCRIPT}
        files: dict[str, str] = dict(shared)
        if not p.combined:
            # Run by exec only (the kafka.brokers procedure; combined nodes ignore that setting),
            # never read by a starting node: outside the digests, so a change to it restarts nothing.
            files[BROKERS_SCRIPT_NAME] = BROKERS_SCRIPT
        #: Per set, a digest of the files its pods read: a change rolls only the sets it touches.
        digests: dict[str, str] = {}
        kinds = ["combined"] if p.combined else ["controller", "broker"]
        for kind in kinds:
            name, _ = self.workload(kind)
            roles = {"controller": ("controller",), "broker": ("broker",), "combined": ("broker", "controller")}[kind]
            role_nodes = [n for n in self.cluster.nodes if n.roles == roles]
            own = {f"{name}-{ordinal}.properties": server_properties(self.cluster, node.node_id)
                   for ordinal, node in enumerate(role_nodes)}
            files.update(own)
            # A broker's file names only itself and the controllers, so the broker count changes
            # none of them: the first one stands for the set, and a new count adds files without
            # restarting the brokers that run (kafka.brokers is a procedure: broker_membership).
            read = dict(list(own.items())[:1]) if kind == "broker" else own
            # Read by format-storage.sh once per volume: outside the digest (rolls nothing).
            files.update({f"{name}-{ordinal}.quorum": "".join(f"{arg}\n" for arg in args)
                          for ordinal, node in enumerate(role_nodes)
                          if (args := quorum_format_args(self.cluster, node.node_id))})
            digests[kind] = hashlib.sha256(json.dumps({**shared, **read}, sort_keys=True).encode()).hexdigest()[:16]
        self.config_map = k8s.KubeConfigMap(
            self, "Config", metadata=k8s.ObjectMeta(name="kafka-config", namespace=ns), data=files,
        )
        set_component(self.config_map, "config")

        self.selectors = {kind: self.label_set.selector(kind) for kind in kinds}
        broker_kind = "combined" if p.combined else "broker"
        controller_kind = "combined" if p.combined else "controller"
        self.headless_services = {
            kind: self._service(f"{kind.capitalize()}Headless", self.workload(kind)[1], kind, headless=True)
            for kind in kinds
        }
        self.bootstrap_service = self._service("Bootstrap", self.BOOTSTRAP_SERVICE, broker_kind, headless=False)

        # Rendered, and rolled by the tests, controllers first: a broker needs the quorum to
        # come back, and a version upgrade brings the controllers' supported metadata
        # versions before the brokers register with theirs (Strimzi rolls KRaft nodes in
        # this order too: strimzi/proposals 060-kafka-roller-kraft.md). A change to both sets
        # is rolled by their two StatefulSet controllers at the same time: one controller
        # and one broker down at once, as in a node drain, which the PDBs also allow.
        self.stateful_sets: dict[str, QuorumStatefulSet] = {}
        for kind in kinds:
            is_broker = kind in ("broker", "combined")
            sizing = p.broker_sizing if is_broker else p.controller_sizing
            heap = p.broker_heap if is_broker else p.controller_heap
            storage = p.broker_storage_gib if is_broker else p.controller_storage_gib
            count = p.controllers if kind != "broker" else p.brokers
            self.stateful_sets[kind] = self._stateful_set(kind, count=count, sizing=sizing, heap=heap, storage=storage,
                                                          digest=digests[kind])
        self._topic_job(broker_kind)
        self._network_policies(broker_kind=broker_kind, controller_kind=controller_kind)
        self.put_first(self.kafka_namespace)

    # -- objects ----------------------------------------------------------------------

    def _service(self, id: str, name: str, kind: str, *, headless: bool) -> k8s.KubeService:
        p = self.props
        if headless:
            service_ports = [
                k8s.ServicePort(name="client", port=p.client_port, target_port=int_or_string(p.client_port)),
                k8s.ServicePort(name="controller", port=p.controller_port, target_port=int_or_string(p.controller_port)),
                k8s.ServicePort(name="replication", port=p.replication_port, target_port=int_or_string(p.replication_port)),
                k8s.ServicePort(name="metrics", port=p.metrics_port, target_port=int_or_string(p.metrics_port)),
            ]
        else:
            service_ports = [k8s.ServicePort(name="client", port=p.client_port, target_port=int_or_string(p.client_port))]
        service = k8s.KubeService(
            self, id,
            metadata=k8s.ObjectMeta(name=name, namespace=self.NAMESPACE),
            spec=k8s.ServiceSpec(
                cluster_ip="None" if headless else None,
                # Nodes resolve each other while starting: the quorum forms before any is ready.
                publish_not_ready_addresses=True if headless else None,
                selector=self.selectors[kind],
                ports=service_ports,
            ),
        )
        set_component(service, kind)
        return service

    def _stateful_set(self, kind: str, *, count: int, sizing: Sizing, heap: int, storage: int,
                      digest: str) -> QuorumStatefulSet:
        p = self.props
        name, service = self.workload(kind)
        config_path = f"{CONFIG_DIR}/$(POD_NAME).properties"
        log4j = f"{CONFIG_DIR}/log4j2.properties"
        classpath = f"{KAFKA_HOME}/libs/*"
        agent = f"-javaagent:{AGENT_DIR}/jmx_prometheus_javaagent.jar={p.metrics_port}:{CONFIG_DIR}/jmx-exporter.yaml"
        server = java_command(java="java", classpath=classpath, main=SERVER_MAIN, args=[config_path], heap_mib=heap,
                              log4j_config=log4j, extra_jvm=[agent])
        scram = [scram_argument(self.cluster.admin_user, "$(KAFKA_ADMIN_PASSWORD)"),
                 scram_argument(self.APP_USER, "$(KAFKA_APP_PASSWORD)")]
        storage_tool = ["sh", f"{CONFIG_DIR}/{FORMAT_SCRIPT_NAME}", *java_command(
            java="java", classpath=classpath, main=STORAGE_MAIN, heap_mib=128, log4j_config=log4j,
            args=format_args(config_path=config_path, cluster_id="$(KAFKA_CLUSTER_ID)", scram=scram),
        )]
        env = [
            k8s.EnvVar(name="POD_NAME", value_from=k8s.EnvVarSource(field_ref=k8s.ObjectFieldSelector(field_path="metadata.name"))),
            _secret_env(ADMIN_PASSWORD_ENV, self.AUTH_SECRET, "admin-password"),
            _secret_env(CONTROLLER_PASSWORD_ENV, self.AUTH_SECRET, "controller-password"),
        ]
        format_env = env + [
            _secret_env("KAFKA_APP_PASSWORD", self.AUTH_SECRET, "app-password"),
            _secret_env("KAFKA_CLUSTER_ID", self.CLUSTER_ID_SECRET, "cluster-id"),
        ]
        mounts = [
            k8s.VolumeMount(name="config", mount_path=CONFIG_DIR, read_only=True),
            k8s.VolumeMount(name="data", mount_path=VOLUME_DIR),
            # The JVM's perf data and native libraries (zstd, snappy) unpack into /tmp.
            k8s.VolumeMount(name="tmp", mount_path="/tmp"),
        ]
        security = container_context(uid=KAFKA_UID)
        fetch_agent = k8s.Container(
            name="fetch-metrics-agent",
            image=versions.PYTHON_IMAGE,
            image_pull_policy="IfNotPresent",
            command=["python3", "-c", _FETCH_AGENT, versions.JMX_AGENT_URL, versions.JMX_AGENT_SHA256, f"{AGENT_DIR}/jmx_prometheus_javaagent.jar"],
            env=[k8s.EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1")],
            volume_mounts=[k8s.VolumeMount(name="data", mount_path=VOLUME_DIR)],
            security_context=security,
            resources=raw_resources(Sizing(cpu_request_m=10, cpu_limit_m=200, memory_request_mib=32, memory_limit_mib=64)),
        )
        format_storage = k8s.Container(
            name="format-storage",
            image=versions.KAFKA_IMAGE,
            image_pull_policy="IfNotPresent",
            command=storage_tool,
            env=format_env,
            volume_mounts=mounts,
            security_context=security,
            resources=raw_resources(Sizing(cpu_request_m=100, cpu_limit_m=1000, memory_request_mib=256, memory_limit_mib=256)),
        )
        container_ports = [k8s.ContainerPort(name="metrics", container_port=p.metrics_port)]
        if kind != "broker":
            container_ports.append(k8s.ContainerPort(name="controller", container_port=p.controller_port))
        if kind != "controller":
            container_ports += [k8s.ContainerPort(name="client", container_port=p.client_port),
                                k8s.ContainerPort(name="replication", container_port=p.replication_port)]
        container = k8s.Container(
            name="kafka",
            image=versions.KAFKA_IMAGE,
            image_pull_policy="IfNotPresent",
            # kafka.Kafka directly: the image's wrapper would write /opt/kafka/config and
            # take its settings from KAFKA_* variables instead of the rendered file.
            command=server,
            env=env,
            ports=container_ports,
            volume_mounts=mounts,
            security_context=security,
            resources=raw_resources(sizing),
            # Ready only when another node of the set may stop: a broker in sync with every
            # partition it follows, a controller caught up with the quorum (READY_SCRIPT). A
            # listener accepts connections seconds before that.
            readiness_probe=k8s.Probe(exec=k8s.ExecAction(command=readiness_command(kind, p.metrics_port)),
                                      period_seconds=READY_PERIOD_S, timeout_seconds=READY_TIMEOUT_S,
                                      failure_threshold=READY_FAILURES),
            # Alive while the JVM answers HTTP (the exporter's health endpoint): recovering a
            # large log after a crash can take minutes, during which the listener is closed.
            liveness_probe=k8s.Probe(http_get=k8s.HttpGetAction(path="/-/healthy", port=int_or_string(p.metrics_port)),
                                     initial_delay_seconds=30, period_seconds=20, timeout_seconds=5, failure_threshold=6),
        )
        sts = QuorumStatefulSet(
            self, {"controller": "Controller", "broker": "Broker", "combined": "Node"}[kind],
            name=name, namespace=self.NAMESPACE, labels=self.label_set, component=kind,
            replicas=count, service_name=service, profile=self.profile, uid=KAFKA_UID,
            init_containers=[fetch_agent, format_storage], containers=[container],
            volumes=[
                k8s.Volume(name="config", config_map=k8s.ConfigMapVolumeSource(name="kafka-config")),
                k8s.Volume(name="tmp", empty_dir=k8s.EmptyDirVolumeSource(size_limit=quantity("256Mi"))),
            ],
            claims=[ClaimSpec(name="data", size_gib=storage)],
            pod_annotations={
                # A change to the files this set reads rolls its pods, one at a time.
                "final-problem.io/config-sha256": digest,
                "prometheus.io/scrape": "true", "prometheus.io/port": str(p.metrics_port), "prometheus.io/path": "/metrics",
            },
            # A clean shutdown moves partition leadership away first; give it time.
            termination_grace_seconds=TERMINATION_GRACE_S,
            min_ready_seconds=MIN_READY_S,
        )
        sts.resource.metadata.add_annotation(
            "checkov.io/skip1", "CKV_K8S_40=the official apache/kafka image runs as its own appuser, uid 1000")
        # Passwords arrive as secretKeyRef env: Kafka's EnvVarConfigProvider reads them from the
        # environment, and the storage tool takes SCRAM passwords only on its command line.
        sts.resource.metadata.add_annotation(
            "checkov.io/skip2", "CKV_K8S_35=Kafka's EnvVarConfigProvider reads passwords from the environment")
        return sts

    def _topic_job(self, broker_kind: str) -> None:
        p = self.props
        ns = self.NAMESPACE
        topics_json = json.dumps([t.to_json() for t in p.topics], sort_keys=True)
        script = TOPICS_SCRIPT.read_text()
        digest = hashlib.sha256((topics_json + script + KAFKA_PYTHON_REQUIREMENT + versions.PYTHON_IMAGE).encode()).hexdigest()[:8]
        name = f"kafka-topics-{digest}"
        self.topics_config = k8s.KubeConfigMap(
            self, "TopicsScript", metadata=k8s.ObjectMeta(name=name, namespace=ns),
            data={"kafka_topics.py": script, "requirements.txt": KAFKA_PYTHON_REQUIREMENT + "\n"}, immutable=True,
        )
        set_component(self.topics_config, "topics")
        self.topics_selector = {"final-problem.io/job": "kafka-topics"}
        command = (
            "set -eu\n"
            "python3 -m pip install --quiet --no-cache-dir --disable-pip-version-check --require-hashes "
            "--target /tmp/deps -r /opt/topics/requirements.txt\n"
            "exec python3 /opt/topics/kafka_topics.py\n"
        )
        container = k8s.Container(
            name="topics",
            image=versions.PYTHON_IMAGE,
            image_pull_policy="IfNotPresent",
            command=["sh", "-c", command],
            env=[
                k8s.EnvVar(name="KAFKA_BOOTSTRAP_SERVERS", value=self.bootstrap_servers),
                k8s.EnvVar(name="KAFKA_USERNAME", value=self.cluster.admin_user),
                _secret_env("KAFKA_PASSWORD", self.AUTH_SECRET, "admin-password"),
                k8s.EnvVar(name="KAFKA_TOPICS", value=topics_json),
                k8s.EnvVar(name="PYTHONPATH", value="/tmp/deps"),
                k8s.EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1"),
                k8s.EnvVar(name="HOME", value="/tmp"),
            ],
            volume_mounts=[
                k8s.VolumeMount(name="script", mount_path="/opt/topics", read_only=True),
                k8s.VolumeMount(name="tmp", mount_path="/tmp"),
            ],
            security_context=container_context(uid=KAFKA_UID),
            resources=raw_resources(Sizing(cpu_request_m=50, cpu_limit_m=500, memory_request_mib=96, memory_limit_mib=192)),
        )
        self.topic_job = k8s.KubeJob(
            self, "TopicJob",
            metadata=k8s.ObjectMeta(name=name, namespace=ns, annotations={
                "checkov.io/skip1": "CKV_K8S_35=kafka-python takes the password as a value; it comes from secretKeyRef",
                "checkov.io/skip2": "CKV_K8S_40=runs as the uid of the Kafka image's appuser, 1000",
            }),
            spec=k8s.JobSpec(
                backoff_limit=10,
                # Waits up to 10 min for the brokers (KAFKA_WAIT_S), then retries.
                active_deadline_seconds=3600,
                ttl_seconds_after_finished=24 * 3600,
                template=k8s.PodTemplateSpec(
                    metadata=k8s.ObjectMeta(labels={**self.label_set.chart_labels(), "app.kubernetes.io/component": "topics",
                                                    **self.topics_selector}),
                    spec=k8s.PodSpec(
                        restart_policy="Never",
                        automount_service_account_token=False,
                        enable_service_links=False,
                        security_context=pod_context(uid=KAFKA_UID),
                        containers=[container],
                        volumes=[
                            k8s.Volume(name="script", config_map=k8s.ConfigMapVolumeSource(name=name)),
                            k8s.Volume(name="tmp", empty_dir=k8s.EmptyDirVolumeSource(size_limit=quantity("128Mi"))),
                        ],
                    ),
                ),
            ),
        )
        set_component(self.topic_job, "topics")
        self.topic_job.add_dependency(self.topics_config)

    def _network_policies(self, *, broker_kind: str, controller_kind: str) -> None:
        p = self.props
        ns = self.NAMESPACE
        brokers = pod_peer(self.selectors[broker_kind])
        controllers = pod_peer(self.selectors[controller_kind])
        nodes = [pod_peer(s) for s in self.selectors.values()]
        # Fetching the metrics agent (Maven Central) and the topic Job's kafka-python (PyPI).
        https_out = k8s.NetworkPolicyEgressRule(ports=ports(443))
        policies: list[k8s.KubeNetworkPolicy] = []
        for kind, selector in self.selectors.items():
            ingress = [
                k8s.NetworkPolicyIngressRule(from_=[namespace_peer(MONITORING_NAMESPACE_LABEL)], ports=ports(p.metrics_port)),
            ]
            egress = [https_out]
            if kind in ("broker", "combined"):
                ingress += [
                    k8s.NetworkPolicyIngressRule(
                        from_=[namespace_peer(CLIENT_NAMESPACE_LABEL), pod_peer(self.topics_selector), brokers],
                        ports=ports(p.client_port)),
                    k8s.NetworkPolicyIngressRule(from_=[brokers], ports=ports(p.replication_port)),
                ]
                egress += [
                    k8s.NetworkPolicyEgressRule(to=[brokers], ports=ports(p.replication_port, p.client_port)),
                    k8s.NetworkPolicyEgressRule(to=[controllers], ports=ports(p.controller_port)),
                ]
            if kind in ("controller", "combined"):
                ingress.append(k8s.NetworkPolicyIngressRule(from_=nodes, ports=ports(p.controller_port)))
                egress.append(k8s.NetworkPolicyEgressRule(to=[controllers], ports=ports(p.controller_port)))
            name, _ = self.workload(kind)
            policy = k8s.KubeNetworkPolicy(
                self, f"{kind.capitalize()}Policy",
                metadata=k8s.ObjectMeta(name=name, namespace=ns),
                spec=k8s.NetworkPolicySpec(
                    pod_selector=k8s.LabelSelector(match_labels=selector),
                    policy_types=["Ingress", "Egress"], ingress=ingress, egress=egress,
                ),
            )
            policies.append(policy)
        policies.append(k8s.KubeNetworkPolicy(
            self, "TopicsPolicy",
            metadata=k8s.ObjectMeta(name="kafka-topics", namespace=ns),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(match_labels=self.topics_selector),
                policy_types=["Ingress", "Egress"],
                egress=[https_out, k8s.NetworkPolicyEgressRule(to=[brokers], ports=ports(p.client_port))],
            ),
        ))
        for policy in policies:
            set_component(policy, "network-policy")
        self.network_policies = policies



#: Bytes in a MiB, for the throttle Kafka takes in bytes per second.
_MIB = 1024 * 1024


def broker_floor(props: KafkaProps) -> tuple[int, str]:
    """The fewest brokers ``props``'s topics allow, and why: every replica of a partition on a
    broker of its own (the replication factor of the defaults and of each declared topic), and
    one broker more than ``min.insync.replicas`` so that one broker may stop (a restart, a
    node drain) while acks=all writes go on."""
    floors = [(props.replication_factor, f"kafka.replication_factor is {props.replication_factor}"),
              (props.min_insync_replicas + 1, f"kafka.min_insync_replicas is {props.min_insync_replicas}: one broker "
                                              "more keeps acks=all writes going while one stops")]
    for t in props.topics:
        floors.append((t.replication_factor, f"topic {t.name} has {t.replication_factor} replicas"))
        if "min.insync.replicas" in t.configs:
            isr = int(t.configs["min.insync.replicas"])
            floors.append((isr + 1, f"topic {t.name} has min.insync.replicas {isr}"))
    return max(floors, key=lambda f: f[0])


@membership("kafka", "brokers")
def broker_membership(old: KafkaProps, new: KafkaProps, namespace: str, *,
                      move_partitions: bool = True) -> list[Step]:
    """The steps that take the broker set from ``old.brokers`` to ``new.brokers``.

    Growing (after the deploy that renders the new brokers' files): check those files are
    mounted, scale the StatefulSet, wait until the new brokers are Ready (registered,
    unfenced), then spread every partition over all brokers. Shrinking (before the deploy):
    move every replica off the brokers being removed, check that none is left (the guard:
    with ``move_partitions=False``, for replicas moved by other means, it is the only
    check), scale down (highest ordinals first), unregister the stopped brokers (a stale
    registration blocks feature upgrades: KIP-1312, Motivation). Moves run throttled at
    ``new.reassignment_throttle_mib_s`` and are waited for until complete, which clears the
    throttle. Every step is the script of ConfigMap ``kafka-config`` run in
    ``kafka-broker-0``, which both sets keep, and is safe to run again. Sources: Kafka 4.4
    docs, "Expanding your cluster", "Decommissioning brokers", "Limiting Bandwidth Usage
    during Data Migration".
    """
    if old.combined or new.combined or old.brokers == new.brokers:
        return []  # the combined layout ignores kafka.brokers
    floor, why = broker_floor(new)
    if new.brokers < floor:
        raise Refused(f"kafka.brokers {old.brokers} -> {new.brokers} refused: {why}, so at least {floor} brokers are "
                      f"needed; keep kafka.brokers={max(floor, new.brokers)} or lower the replication first")
    name, service = KafkaChart.workload("broker")
    runner_pod = f"{name}-0"
    bootstrap = f"{KafkaChart.BOOTSTRAP_SERVICE}.{namespace}.svc:{new.client_port}"
    ids = [BROKER_ID_OFFSET + i for i in range(max(old.brokers, new.brokers))]
    staying = ids[:new.brokers]

    def script(command: str, broker_ids: list[int], why: str, **extra: Any) -> Exec:
        return Exec(runner_pod, "kafka", brokers_command(
            f"{CONFIG_DIR}/{BROKERS_SCRIPT_NAME}", command, broker_ids, home=KAFKA_HOME, bootstrap=bootstrap,
            admin_user=new.cluster_config(namespace=namespace).admin_user, **extra), why, namespace)

    throttle = new.reassignment_throttle_mib_s * _MIB
    spread = script("spread", staying, f"move replicas so every partition lives on brokers {staying[0]}-{staying[-1]} "
                                       f"only, spread evenly, throttled at {new.reassignment_throttle_mib_s} MiB/s",
                    throttle_bytes_s=throttle)
    if new.brokers > old.brokers:
        added = ids[old.brokers:]
        return [
            script("has-config", added, "the deploy gave kafka-config the new brokers' server files",
                   config_dir=CONFIG_DIR, first_id=BROKER_ID_OFFSET),
            Scale(name, new.brokers, f"start brokers {added[0]}-{added[-1]} (empty)", namespace),
            WaitReady(name, new.brokers, "the new brokers registered and unfenced (RUNNING)", namespace),
            spread,
        ]
    removed = ids[new.brokers:]
    steps: list[Step] = [spread] if move_partitions else []
    steps += [
        script("check-empty", removed, f"refuse while brokers {removed[0]}-{removed[-1]} hold a partition replica"),
        Scale(name, new.brokers, f"stop brokers {removed[0]}-{removed[-1]} (highest ordinal first)", namespace),
        script("unregister", removed, "remove the stopped brokers' registrations"),
    ]
    return steps
