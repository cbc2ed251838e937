"""Backups to an S3-compatible target, with the Python standard library only.

This file is the program itself: the postgres chart puts its text in a ConfigMap and runs it
in the python image (the ``backup`` sidecar), the local tests run the same text with the
host's Python, and :mod:`final_problem.backup` imports it for ``restore``. It imports nothing
from the project.

PostgreSQL (continuous archiving and point-in-time recovery, PostgreSQL 17 docs, 25.3):

- ``archive_command`` (``archive-wal.sh``, :data:`ARCHIVE_WAL_SH`) copies each finished WAL
  segment into the spool on the server's volume and waits until this agent has uploaded it and
  read it back: PostgreSQL recycles a segment once the command returns 0, so it returns 0 only
  for a segment that is in the bucket (docs: "the command [must] return zero exit status only
  if it succeeds").
- ``base-backup.sh`` (:data:`BASE_BACKUP_SH`) runs ``pg_basebackup`` (plain format, a
  ``backup_manifest`` with a SHA-256 of every file) every ``interval`` hours and checks it with
  ``pg_verifybackup``; this agent tars it, uploads it and then writes its listing,
  ``base/<id>/backup.json`` (the archive's SHA-256 and size, the first WAL segment it needs,
  the time it ended), last: a base backup without its listing is not a backup.
- ``restore-postgres`` picks the newest base backup that ended before the target time, checks
  the archive against its listing and every file against ``backup_manifest``, checks the WAL
  after it is complete and reaches the target, and leaves a data directory that recovers to
  the target when PostgreSQL starts on it (``recovery.signal``, ``recovery_target_time``).

Objects (under ``<prefix>/postgres/``): ``wal/<segment>.gz`` (gzip, user metadata
``sha256`` of the segment and ``archived-at``), ``base/<id>/base.tar.gz`` and
``base/<id>/backup.json``. An existing WAL object is never replaced by different content.

Requests are signed with AWS Signature Version 4 (AWS docs, "Signature Version 4 for API
requests"), path-style, each upload with ``Content-MD5`` so the server refuses a body damaged on
the way (Amazon S3 API reference, PutObject).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import gzip
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import sys
import tarfile
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET

WAL_NAME = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
HISTORY_NAME = re.compile(r"^[0-9A-F]{8}\.history$")
LISTING_FORMAT = 1


class BackupError(Exception):
    """A refusal or failure, said in one line: what, the problem, the fix."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 time with its zone (``2026-12-07T03:40:00Z``, ``...+01:00``)."""
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise BackupError(f"time {text!r}: not an ISO 8601 time; give one like 2026-12-07T03:40:00Z") from None
    if t.tzinfo is None:
        raise BackupError(f"time {text!r}: no time zone; add one, e.g. {text.strip()}Z for UTC")
    return t.astimezone(dt.timezone.utc)


# -- credentials -------------------------------------------------------------------------------

class StaticCredentials:
    """A key pair (and a session token, when the pair is temporary) given once."""

    def __init__(self, access_key: str, secret_key: str, session_token: str = "") -> None:
        self.access_key, self.secret_key, self.session_token = access_key, secret_key, session_token

    def current(self) -> tuple[str, str, str]:
        return self.access_key, self.secret_key, self.session_token


class ContainerCredentials:
    """Temporary credentials from the container credential endpoint, as EKS Pod Identity serves
    them (AWS SDKs and Tools reference guide, "Container credential provider"): a GET of
    ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` with the contents of
    ``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`` in the ``Authorization`` header answers JSON
    with ``AccessKeyId``, ``SecretAccessKey``, ``Token`` and ``Expiration``.

    The token file is read at every fetch: the kubelet rotates the projected service account
    token behind it. Credentials are fetched again :data:`REFRESH_BEFORE_S` before they expire;
    a failed refresh keeps the old ones while they are still valid for
    :data:`MIN_VALID_S`, and is retried at the next request.
    """

    #: botocore's advisory refresh: 15 minutes before expiry (botocore/credentials.py,
    #: RefreshableCredentials._advisory_refresh_timeout).
    REFRESH_BEFORE_S = 15 * 60
    #: Credentials this close to expiry are not used: a request signed now may arrive after it.
    MIN_VALID_S = 60

    def __init__(self, uri: str, token_file: str, *, timeout_s: float = 10) -> None:
        url = urllib.parse.urlsplit(uri)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise BackupError(f"AWS_CONTAINER_CREDENTIALS_FULL_URI {uri!r}: not an http(s) URL; it is set by "
                              "EKS Pod Identity for a pod whose service account has an association")
        self.uri, self.token_file, self.timeout_s = uri, token_file, timeout_s
        self.expiration: dt.datetime | None = None
        self._keys: tuple[str, str, str] | None = None
        #: How many times credentials were fetched (the tests count refreshes).
        self.fetches = 0

    def current(self) -> tuple[str, str, str]:
        now = utcnow()
        if self._keys is not None and self.expiration is not None and \
                (self.expiration - now).total_seconds() > self.REFRESH_BEFORE_S:
            return self._keys
        try:
            self._fetch()
        except BackupError:
            if self._keys is not None and self.expiration is not None and \
                    (self.expiration - now).total_seconds() > self.MIN_VALID_S:
                return self._keys
            raise
        assert self._keys is not None
        return self._keys

    def _fetch(self) -> None:
        try:
            with open(self.token_file) as f:
                token = f.read().strip()
        except OSError as e:
            raise BackupError(f"credentials: cannot read the token file {self.token_file} ({e.strerror}); EKS "
                              "Pod Identity mounts it in pods of an associated service account") from None
        url = urllib.parse.urlsplit(self.uri)
        conn_class = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        conn = conn_class(url.hostname, url.port, timeout=self.timeout_s)
        try:
            conn.request("GET", (url.path or "/") + (f"?{url.query}" if url.query else ""),
                         headers={"Authorization": token})
            response = conn.getresponse()
            body = response.read()
        except OSError as e:
            raise BackupError(f"credentials: GET {self.uri} failed ({e}); check the EKS Pod Identity agent runs "
                              "on the node and the pod may reach it") from None
        finally:
            conn.close()
        if response.status != 200:
            raise BackupError(f"credentials: {self.uri} answered {response.status} "
                              f"{body[:120].decode(errors='replace')!r}; check the service account's Pod Identity "
                              "association")
        try:
            data = json.loads(body)
            keys = (data["AccessKeyId"], data["SecretAccessKey"], data.get("Token", ""))
            expiration = parse_time(data["Expiration"])
            assert all(isinstance(k, str) for k in keys) and keys[0] and keys[1]
        except Exception:
            raise BackupError(f"credentials: {self.uri} answered no AccessKeyId, SecretAccessKey and Expiration; "
                              "check AWS_CONTAINER_CREDENTIALS_FULL_URI names the Pod Identity agent") from None
        self._keys, self.expiration = keys, expiration
        self.fetches += 1


class KubernetesSecretCredentials:
    """A key pair kept in a Secret of another namespace (the root key pair of the S3 server a
    cluster runs), read through the API with the pod's projected service account token, once:
    the pair changes only when the Secret is deleted and generated again, and the pod is then
    restarted."""

    def __init__(self, secret: str, token_file: str, ca_file: str, *, api: str = "") -> None:
        namespace, _, name = secret.partition("/")
        if not namespace or not name:
            raise BackupError(f"BACKUP_S3_KEY_PAIR_FROM {secret!r}: not <namespace>/<name>; set it like "
                              "backups/backup-target-root")
        self.namespace, self.name, self.token_file, self.ca_file = namespace, name, token_file, ca_file
        self.api = api or "https://%s:%s" % (os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc"),
                                             os.environ.get("KUBERNETES_SERVICE_PORT", "443"))
        self._keys: tuple[str, str, str] | None = None

    def current(self) -> tuple[str, str, str]:
        if self._keys is None:
            self._keys = self._read()
        return self._keys

    def _read(self) -> tuple[str, str, str]:
        import ssl
        import urllib.error
        import urllib.request

        where = f"Secret {self.namespace}/{self.name}"
        try:
            with open(self.token_file) as f:
                token = f.read().strip()
            context = ssl.create_default_context(cafile=self.ca_file)
        except OSError as e:
            raise BackupError(f"credentials: cannot read {e.filename} ({e.strerror}); the pod needs its projected "
                              "service account token to read " + where) from None
        request = urllib.request.Request(f"{self.api}/api/v1/namespaces/{self.namespace}/secrets/{self.name}",
                                         headers={"Authorization": "Bearer " + token})
        try:
            with urllib.request.urlopen(request, context=context, timeout=30) as response:
                data = json.load(response)["data"]
            return (base64.b64decode(data["access-key-id"]).decode(),
                    base64.b64decode(data["secret-access-key"]).decode(), "")
        except urllib.error.HTTPError as e:
            raise BackupError(f"credentials: reading {where} answered {e.code}; it is generated when the S3 "
                              "server is first deployed, and this pod's service account needs a Role to get it") from None
        except (OSError, ValueError, KeyError) as e:
            raise BackupError(f"credentials: reading {where} failed ({e}); check the API server is reachable and "
                              "the Secret has access-key-id and secret-access-key") from None


def credentials_from_env(env: "os._Environ[str] | dict[str, str]" = os.environ):
    """The credentials the environment names, in the AWS SDKs' order for the two they share: a
    key pair (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``) first,
    then the container endpoint (EKS Pod Identity); then a Secret of the cluster
    (``BACKUP_S3_KEY_PAIR_FROM``, the in-cluster S3 server's). None when none is named."""
    if env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_SECRET_ACCESS_KEY"):
        if not (env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY")):
            raise BackupError("backup target: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together; set both")
        return StaticCredentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                                 env.get("AWS_SESSION_TOKEN", ""))
    if env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        if not env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"):
            raise BackupError("backup target: AWS_CONTAINER_CREDENTIALS_FULL_URI is set without "
                              "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE; EKS Pod Identity sets both")
        return ContainerCredentials(env["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
                                    env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"])
    if env.get("BACKUP_S3_KEY_PAIR_FROM"):
        token_dir = env.get("BACKUP_S3_SA_DIR", "/var/run/secrets/backup")
        return KubernetesSecretCredentials(env["BACKUP_S3_KEY_PAIR_FROM"], f"{token_dir}/token",
                                           f"{token_dir}/ca.crt")
    return None


# -- S3 ---------------------------------------------------------------------------------------

class S3:
    """Path-style S3 requests signed with Signature Version 4."""

    def __init__(self, *, endpoint: str, bucket: str, region: str, access_key: str = "", secret_key: str = "",
                 session_token: str = "", credentials: "StaticCredentials | ContainerCredentials | "
                 "KubernetesSecretCredentials | None" = None, timeout_s: float = 60) -> None:
        url = urllib.parse.urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise BackupError(f"backup target endpoint {endpoint!r}: not an http(s) URL; set it like http://host:7070")
        self.scheme, self.host, self.port = url.scheme, url.hostname, url.port
        self.netloc = url.netloc
        self.bucket, self.region = bucket, region
        #: Where each request's keys come from: fetched anew when temporary ones near expiry.
        self.credentials = credentials or StaticCredentials(access_key, secret_key, session_token)
        self.timeout_s = timeout_s

    @classmethod
    def from_env(cls, env: "os._Environ[str] | dict[str, str]" = os.environ) -> "S3":
        missing = [k for k in ("BACKUP_S3_ENDPOINT", "BACKUP_S3_BUCKET") if not env.get(k)]
        credentials = credentials_from_env(env)
        if credentials is None:
            missing.append("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_CONTAINER_CREDENTIALS_FULL_URI)")
        if missing:
            raise BackupError(f"backup target: {', '.join(missing)} not set; set the target's endpoint, bucket "
                              "and credentials in the environment")
        return cls(endpoint=env["BACKUP_S3_ENDPOINT"], bucket=env["BACKUP_S3_BUCKET"],
                   region=env.get("BACKUP_S3_REGION") or "us-east-1", credentials=credentials)

    def _path(self, key: str) -> str:
        return "/" + urllib.parse.quote(self.bucket, safe="") + ("/" + urllib.parse.quote(key, safe="/-_.~") if key else "")

    def _sign(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], payload_sha: str) -> None:
        now = utcnow()
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        access_key, secret_key, session_token = self.credentials.current()
        headers.update({"host": self.netloc, "x-amz-date": stamp, "x-amz-content-sha256": payload_sha})
        if session_token:
            # Temporary credentials: the token is sent, and signed, with every request (AWS docs,
            # "Signature Version 4 for API requests": X-Amz-Security-Token).
            headers["x-amz-security-token"] = session_token
        names = sorted(k.lower() for k in headers)
        lowered = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
        canonical_query = "&".join(
            f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}" for k, v in sorted(query.items()))
        canonical = "\n".join([method, path, canonical_query, "".join(f"{n}:{lowered[n]}\n" for n in names),
                               ";".join(names), payload_sha])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + secret_key).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                                    f"SignedHeaders={';'.join(names)}, Signature={signature}")

    def request(self, method: str, key: str = "", *, query: dict[str, str] | None = None, body: bytes | None = None,
                body_file: str | None = None, body_range: tuple[int, int] | None = None,
                headers: dict[str, str] | None = None,
                into_file: str | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request; the response body is returned, or streamed into ``into_file`` when the
        answer is 200. ``body_file`` is streamed, all of it or the ``body_range`` (offset,
        length) of it."""
        query = dict(query or {})
        headers = dict(headers or {})
        if body_file is not None:
            payload_sha, size = file_digest(body_file, "sha256", body_range)
            headers["Content-Length"] = str(size)
        else:
            body = body or b""
            payload_sha = hashlib.sha256(body).hexdigest()
            if method in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
        path = self._path(key)
        self._sign(method, path, query, headers, payload_sha)
        target = path + ("?" + urllib.parse.urlencode(sorted(query.items()), quote_via=urllib.parse.quote) if query else "")
        conn_class = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = conn_class(self.host, self.port, timeout=self.timeout_s)
        try:
            if body_file is not None:
                with open(body_file, "rb") as f:
                    if body_range is not None:
                        f.seek(body_range[0])
                    conn.request(method, target, body=FileSlice(f, int(headers["Content-Length"])), headers=headers)
                    response = conn.getresponse()
            else:
                conn.request(method, target, body=body, headers=headers)
                response = conn.getresponse()
            if into_file is not None and response.status == 200:
                with open(into_file, "wb") as out:
                    shutil.copyfileobj(response, out, 1 << 20)
                data = b""
            else:
                data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        except OSError as e:
            raise BackupError(f"backup target {self.scheme}://{self.netloc}: {method} {key or self.bucket} failed "
                              f"({e}); check the endpoint is reachable") from None
        finally:
            conn.close()

    def _fail(self, what: str, status: int, data: bytes) -> BackupError:
        code = re.search(rb"<Code>([^<]*)</Code>", data)
        reason = code.group(1).decode() if code else data[:120].decode(errors="replace")
        return BackupError(f"backup target: {what} answered {status} {reason}; check the bucket and the credentials")

    def create_bucket(self) -> None:
        """Create the bucket when it does not exist (a target the platform deploys); one that
        exists is used as it is (HeadBucket needs only s3:ListBucket, which the EKS role has)."""
        status, _, data = self.request("HEAD")
        if status == 200:
            return
        if status != 404:
            raise self._fail(f"HEAD bucket {self.bucket}", status, data)
        status, _, data = self.request("PUT")
        if status not in (200, 409):  # 409: BucketAlreadyOwnedByYou (or exists)
            raise self._fail(f"creating bucket {self.bucket}", status, data)

    #: Files larger than this go up in parts (S3 takes at most 5 GiB in one PUT; "Uploading and
    #: copying objects using multipart upload", Amazon S3 User Guide). 64 MiB parts: a part is
    #: streamed from the file, never held in memory, and 10,000 of them (S3's most) hold
    #: 625 GiB; a larger file takes larger parts.
    multipart_threshold = 64 << 20
    part_size = 64 << 20
    #: S3's limits on a multipart upload: parts, and the smallest part but the last.
    MAX_PARTS, MIN_PART = 10_000, 5 << 20

    def put(self, key: str, *, body: bytes | None = None, body_file: str | None = None,
            meta: dict[str, str] | None = None) -> None:
        if body_file is not None and os.path.getsize(body_file) > self.multipart_threshold:
            self.put_parts(key, body_file, meta=meta)
            return
        md5 = hashlib.md5(body).digest() if body is not None else bytes.fromhex(file_digest(body_file or "", "md5")[0])
        headers = {"Content-MD5": base64.b64encode(md5).decode(), "Content-Type": "application/octet-stream",
                   **{f"x-amz-meta-{k}": v for k, v in (meta or {}).items()}}
        status, _, data = self.request("PUT", key, body=body, body_file=body_file, headers=headers)
        if status != 200:
            raise self._fail(f"PUT {key}", status, data)

    def put_parts(self, key: str, path: str, *, meta: dict[str, str] | None = None) -> None:
        """``path`` as one object, in parts (CreateMultipartUpload, UploadPart each with its
        Content-MD5, CompleteMultipartUpload); aborted on any failure, so no part is left to
        pay for (the bucket's lifecycle also aborts uploads left incomplete)."""
        size = os.path.getsize(path)
        part = max(self.part_size, self.MIN_PART, -(-size // self.MAX_PARTS))
        headers = {"Content-Type": "application/octet-stream", **{f"x-amz-meta-{k}": v for k, v in (meta or {}).items()}}
        status, _, data = self.request("POST", key, query={"uploads": ""}, headers=headers)
        upload_id = re.search(rb"<UploadId>([^<]+)</UploadId>", data) if status == 200 else None
        if upload_id is None:
            raise self._fail(f"starting the multipart upload of {key}", status, data)
        upload = upload_id.group(1).decode()
        try:
            etags = []
            for number, offset in enumerate(range(0, size, part), start=1):
                length = min(part, size - offset)
                md5 = bytes.fromhex(file_digest(path, "md5", (offset, length))[0])
                status, answer, data = self.request(
                    "PUT", key, query={"partNumber": str(number), "uploadId": upload}, body_file=path,
                    body_range=(offset, length), headers={"Content-MD5": base64.b64encode(md5).decode()})
                if status != 200 or "etag" not in answer:
                    raise self._fail(f"PUT {key} part {number}", status, data)
                etags.append(answer["etag"])
            done = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{tag}</ETag></Part>"
                           for n, tag in enumerate(etags, start=1))
            body = f"<CompleteMultipartUpload>{done}</CompleteMultipartUpload>".encode()
            status, _, data = self.request("POST", key, query={"uploadId": upload}, body=body)
            # A completion can fail after its 200: the error is then in the body.
            if status != 200 or b"<Error>" in data:
                raise self._fail(f"completing the multipart upload of {key}", status, data)
        except BaseException:
            try:
                self.request("DELETE", key, query={"uploadId": upload})
            except BackupError:
                pass  # the first failure is the one to report; the lifecycle rule aborts it later
            raise

    def head(self, key: str) -> dict[str, str] | None:
        status, headers, data = self.request("HEAD", key)
        if status == 404:
            return None
        if status != 200:
            raise self._fail(f"HEAD {key}", status, data)
        return headers

    def get(self, key: str) -> tuple[dict[str, str], bytes] | None:
        status, headers, data = self.request("GET", key)
        if status == 404:
            return None
        if status != 200:
            raise self._fail(f"GET {key}", status, data)
        return headers, data

    def download(self, key: str, path: str) -> dict[str, str] | None:
        """GET ``key`` into the file ``path``, streamed; None when there is no such object."""
        status, headers, data = self.request("GET", key, into_file=path)
        if status == 404:
            return None
        if status != 200:
            raise self._fail(f"GET {key}", status, data)
        return headers

    def delete(self, key: str) -> None:
        status, _, data = self.request("DELETE", key)
        if status not in (200, 204, 404):
            raise self._fail(f"DELETE {key}", status, data)

    def list(self, prefix: str) -> dict[str, int]:
        """Every key under ``prefix`` with its size (ListObjectsV2, page by page)."""
        found: dict[str, int] = {}
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix, **({"continuation-token": token} if token else {})}
            status, _, data = self.request("GET", query=query)
            if status != 200:
                raise self._fail(f"listing {prefix}", status, data)
            root = ET.fromstring(data)
            ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            for item in root.findall(f"{ns}Contents"):
                found[item.findtext(f"{ns}Key") or ""] = int(item.findtext(f"{ns}Size") or 0)
            if (root.findtext(f"{ns}IsTruncated") or "false").lower() != "true":
                return found
            token = root.findtext(f"{ns}NextContinuationToken") or ""


def file_digest(path: str, algorithm: str, byte_range: tuple[int, int] | None = None) -> tuple[str, int]:
    """The digest and size of the file, or of the (offset, length) range of it."""
    digest, size = hashlib.new(algorithm), 0
    with open(path, "rb") as f:
        left = None
        if byte_range is not None:
            f.seek(byte_range[0])
            left = byte_range[1]
        while chunk := f.read(1 << 20 if left is None else min(1 << 20, left - size)):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class FileSlice:
    """The next ``length`` bytes of an open file, read in blocks as http.client sends them."""

    def __init__(self, f: "object", length: int) -> None:
        self.f, self.left = f, length

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n) if n else b""  # type: ignore[attr-defined]
        self.left -= len(data)
        return data


def write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- PostgreSQL: the agent ---------------------------------------------------------------------

class Postgres:
    """The PostgreSQL backups of one server under ``<prefix>/postgres/``."""

    def __init__(self, s3: S3, prefix: str) -> None:
        self.s3 = s3
        self.root = (prefix.strip("/") + "/postgres/") if prefix.strip("/") else "postgres/"

    # WAL ------------------------------------------------------------------------------------

    def upload_wal(self, path: str) -> None:
        """Upload one spooled segment (or history file), read it back, then mark it done."""
        name = os.path.basename(path)
        with open(path, "rb") as f:
            data = f.read()
        sha = hashlib.sha256(data).hexdigest()
        key = f"{self.root}wal/{name}.gz"
        existing = self.s3.head(key)
        if existing is not None:
            if existing.get("x-amz-meta-sha256") != sha:
                # PostgreSQL docs, 25.3.1: the archive command must refuse to overwrite an existing
                # archive file (an old cluster's, or another server's archiving to the same place).
                raise BackupError(f"WAL {name}: {key} exists with other content; give each server its own "
                                  "backup prefix, or move the old archive away")
        else:
            self.s3.put(key, body=gzip.compress(data, compresslevel=1),
                        meta={"sha256": sha, "size": str(len(data)), "archived-at": iso(utcnow())})
            stored = self.s3.head(key)
            if stored is None or stored.get("x-amz-meta-sha256") != sha:
                raise BackupError(f"WAL {name}: not readable back from {key} after the upload; check the target")
        write_atomic(path + ".done", sha + "\n")

    # Base backups ---------------------------------------------------------------------------

    def upload_base(self, ready_dir: str, end_file: str, retention_days: int) -> str:
        """Tar, upload and list a base backup ``pg_basebackup`` left in ``ready_dir``."""
        backup_id = os.path.basename(ready_dir).removesuffix(".ready")
        with open(os.path.join(ready_dir, "backup_label")) as f:
            label = f.read()
        start = re.search(r"START WAL LOCATION: \S+ \(file ([0-9A-F]{24})\)", label)
        if start is None:
            raise BackupError(f"base backup {backup_id}: backup_label names no start WAL; run it again")
        with open(end_file) as f:
            ended = parse_time(f.read())
        archive = ready_dir + ".tar.gz"
        with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
            for entry in sorted(os.listdir(ready_dir)):
                tar.add(os.path.join(ready_dir, entry), arcname=entry)
        sha, size = file_digest(archive, "sha256")
        key = f"{self.root}base/{backup_id}/base.tar.gz"
        self.s3.put(key, body_file=archive, meta={"sha256": sha})
        stored = self.s3.head(key)
        if stored is None or int(stored.get("content-length", -1)) != size:
            raise BackupError(f"base backup {backup_id}: {key} not readable back at its size; check the target")
        listing = {"format": LISTING_FORMAT, "id": backup_id, "ended": iso(ended), "start_wal": start.group(1),
                   "archive": {"key": key, "sha256": sha, "size": size}}
        self.s3.put(f"{self.root}base/{backup_id}/backup.json", body=json.dumps(listing, indent=1).encode())
        shutil.rmtree(ready_dir)
        os.unlink(archive)
        os.unlink(end_file)
        self.prune(retention_days)
        return backup_id

    def listings(self) -> list[dict]:
        """The listing of every base backup, oldest first; one that cannot be read is an error."""
        found = []
        for key in sorted(self.s3.list(f"{self.root}base/")):
            if not key.endswith("/backup.json"):
                continue
            got = self.s3.get(key)
            try:
                listing = json.loads(got[1]) if got else None
                listing["ended"] = parse_time(listing["ended"])
                assert listing["format"] == LISTING_FORMAT and WAL_NAME.match(listing["start_wal"])
            except Exception:
                raise BackupError(f"base backup listing {key}: unreadable; delete that backup "
                                  f"(its folder {key.rsplit('/', 1)[0]}/) or restore it from the bucket's versions") from None
            found.append(listing)
        return sorted(found, key=lambda item: item["ended"])

    def prune(self, retention_days: int) -> None:
        """Delete base backups that ended more than ``retention_days`` ago (the newest is always
        kept) and the WAL only they needed."""
        listings = self.listings()
        cutoff = utcnow() - dt.timedelta(days=retention_days)
        old = [item for item in listings[:-1] if item["ended"] < cutoff]
        for item in old:
            # The listing first: a backup half deleted is no longer listed.
            self.s3.delete(f"{self.root}base/{item['id']}/backup.json")
            self.s3.delete(item["archive"]["key"])
        kept = [item for item in listings if item not in old]
        if not kept:
            return
        first = segment_position(kept[0]["start_wal"])
        for key in self.s3.list(f"{self.root}wal/"):
            name = key.rsplit("/", 1)[-1].removesuffix(".gz")
            if WAL_NAME.match(name) and segment_position(name) < first:
                self.s3.delete(key)

    # Restore --------------------------------------------------------------------------------

    def restore(self, *, target: dt.datetime | None, pgdata: str, wal_dir: str) -> str:
        """Make ``pgdata`` (empty or absent) a copy that recovers to ``target`` when started;
        ``None``: to the end of the archive (the newest base backup, every segment after it)."""
        if os.path.isdir(pgdata) and os.listdir(pgdata):
            raise BackupError(f"restore: {pgdata} is not empty; restore onto an empty data directory "
                              "(a new volume, or move the old directory away)")
        listings = self.listings()
        where = f"{self.s3.bucket}/{self.root}"
        if not listings:
            raise BackupError(f"restore: no base backup under {where}; take one first (the backup sidecar "
                              "takes the first within minutes of its start)")
        before = [item for item in listings if target is None or item["ended"] <= target]
        if not before:
            raise BackupError(f"restore: no base backup ended before {iso(target)} (the oldest ended at "
                              f"{iso(listings[0]['ended'])}); choose --to after that")
        chosen = before[-1]
        created_wal_dir = not os.path.exists(wal_dir)
        os.makedirs(pgdata, mode=0o700, exist_ok=True)
        os.makedirs(wal_dir, mode=0o700, exist_ok=True)
        try:
            # Everything is fetched and checked before the data directory is written: a refused
            # restore leaves it empty, to be run again.
            archive = os.path.join(wal_dir, f"base-{chosen['id']}.tar.gz")
            if self.s3.download(chosen["archive"]["key"], archive) is None:
                raise BackupError(f"restore: base backup {chosen['id']} is missing its archive "
                                  f"{chosen['archive']['key']}; choose --to before {iso(chosen['ended'])} for an older one")
            sha, size = file_digest(archive, "sha256")
            if (sha, size) != (chosen["archive"]["sha256"], chosen["archive"]["size"]):
                raise BackupError(f"restore: base backup {chosen['id']} is corrupt (its archive's SHA-256 or size "
                                  f"differs from its listing); choose --to before {iso(chosen['ended'])} for an older one")
            segments = self.fetch_wal(chosen, target, wal_dir)
            extract(archive, pgdata, chosen["id"])
            os.unlink(archive)
            verify_manifest(pgdata, chosen["id"])
        except BaseException:
            for entry in os.listdir(pgdata):
                path = os.path.join(pgdata, entry)
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
            if created_wal_dir:
                shutil.rmtree(wal_dir, ignore_errors=True)
            elif os.path.exists(archive):
                os.unlink(archive)
            raise
        os.chmod(pgdata, 0o700)
        with open(os.path.join(pgdata, "postgresql.auto.conf"), "a") as f:
            # PostgreSQL docs, 20.5.5 Archive Recovery and 20.5.6 Recovery Target.
            f.write("\n# written by the restore of base backup %s\n" % chosen["id"])
            f.write("restore_command = 'cp \"%s/%%f\" \"%%p\"'\n" % wal_dir.replace("'", "''"))
            # Without a target, recovery replays every segment restore_command finds, then
            # ends (docs, "Recovery Target": "By default, recovery will recover to the end of
            # the WAL log"). Either way the server then takes a new timeline, numbered
            # above every history file in the archive (fetched into wal_dir; docs 25.3,
            # "Timelines"): its segments and history file have names the archive's never had.
            if target is not None:
                f.write("recovery_target_time = '%s'\n" % target.strftime("%Y-%m-%d %H:%M:%S.%f+00"))
                f.write("recovery_target_action = 'promote'\n")
        open(os.path.join(pgdata, "recovery.signal"), "w").close()
        to = iso(target) if target is not None else "the end of the archive"
        return (f"restored base backup {chosen['id']} (ended {iso(chosen['ended'])}) and {segments} WAL files into "
                f"{pgdata}: PostgreSQL recovers to {to} when started on it")

    def fetch_wal(self, chosen: dict, target: dt.datetime | None, wal_dir: str) -> int:
        """Download and check every segment from the backup's first; refuse a gap or an archive
        that ends before ``target`` (``None``: the end of the archive, whatever it is)."""
        first = segment_position(chosen["start_wal"])
        keys = self.s3.list(f"{self.root}wal/")
        wanted = []
        for key in sorted(keys):
            name = key.rsplit("/", 1)[-1].removesuffix(".gz")
            if HISTORY_NAME.match(name) or (WAL_NAME.match(name) and segment_position(name) >= first):
                wanted.append((name, key))
        positions = sorted({segment_position(n) for n, _ in wanted if WAL_NAME.match(n)})
        if not positions or positions[0] != first:
            raise BackupError(f"restore: WAL segment {chosen['start_wal']} (the first base backup {chosen['id']} "
                              "needs) is missing from the archive; choose --to for another base backup")
        newest = None
        for name, key in wanted:
            got = self.s3.get(key)
            if got is None:
                raise BackupError(f"restore: WAL {name} vanished from the archive during the restore; run it again")
            headers, body = got
            try:
                data = gzip.decompress(body)
            except (OSError, EOFError):
                data = b""
            if hashlib.sha256(data).hexdigest() != headers.get("x-amz-meta-sha256"):
                raise BackupError(f"restore: WAL {name} is corrupt (its SHA-256 differs from the one recorded at "
                                  "upload); recovery cannot pass it: choose --to before it was archived")
            with open(os.path.join(wal_dir, name), "wb") as f:
                f.write(data)
            if WAL_NAME.match(name):
                at = parse_time(headers.get("x-amz-meta-archived-at", "1970-01-01T00:00:00Z"))
                newest = at if newest is None or at > newest else newest
        for earlier, later in zip(positions, positions[1:], strict=False):
            if later != earlier + 1:
                raise BackupError(f"restore: WAL after position {earlier:#x} is missing from the archive; recovery "
                                  "stops there: choose --to before that segment was archived")
        if newest is None or (target is not None and newest < target):
            raise BackupError(f"restore: the archive ends at {iso(newest) if newest else 'nothing'}, before "
                              f"{iso(target) if target is not None else 'the end of the archive'}; choose --to at or before it")
        return len(wanted)


def segment_position(name: str) -> int:
    """A WAL segment's position, timelines aside: (log id << 32) + segment number (16 MiB
    segments, the initdb default: 256 per log id)."""
    m = WAL_NAME.match(name)
    if m is None:
        raise BackupError(f"WAL name {name!r}: not a segment name")
    return (int(m.group(2), 16) << 8) + int(m.group(3), 16)


def extract(archive: str, into: str, backup_id: str) -> None:
    """Unpack a base backup's archive; a member that would land outside ``into`` (an absolute
    path, ``..``, a link or a device) refuses the backup."""
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            parts = member.name.split("/")
            if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
                raise BackupError(f"restore: base backup {backup_id} holds {member.name!r}, not a plain file "
                                  "inside the data directory; choose --to for another base backup")
        if hasattr(tarfile, "data_filter"):  # Python 3.12, and 3.11.4 onwards (PEP 706)
            tar.extractall(into, members=members, filter="data")
        else:
            tar.extractall(into, members=members)


def verify_manifest(pgdata: str, backup_id: str) -> None:
    """Check every file against the base backup's ``backup_manifest`` (its SHA-256 and size)."""
    try:
        with open(os.path.join(pgdata, "backup_manifest")) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        raise BackupError(f"restore: base backup {backup_id} has no readable backup_manifest; "
                          "choose --to for another base backup") from None
    for item in manifest.get("Files", []):
        path = os.path.join(pgdata, item["Path"])
        algorithm = item.get("Checksum-Algorithm", "NONE").lower().replace("-", "")
        try:
            digest, size = file_digest(path, algorithm if algorithm in ("sha256", "sha512", "sha384", "sha224") else "sha256")
        except OSError:
            raise BackupError(f"restore: base backup {backup_id} lacks {item['Path']}; choose --to for another") from None
        if size != item["Size"] or (algorithm.startswith("sha") and digest != item["Checksum"]):
            raise BackupError(f"restore: base backup {backup_id}: {item['Path']} differs from backup_manifest; "
                              "choose --to for another base backup")


# -- freshness metrics -------------------------------------------------------------------------

class Metrics:
    """Backup freshness in the Prometheus text exposition format (version 0.0.4), served on
    ``GET /metrics`` by :meth:`serve`:

    - ``final_problem_backup_last_success_timestamp_seconds{component, kind}``: when the last
      backup of that kind went up and was read back (Unix time);
    - ``final_problem_backup_age_seconds{component, kind}``: its age at the scrape, what an
      alert compares with the schedule;
    - ``final_problem_backup_uploads_total{component, kind, result}``: uploads that succeeded
      and that failed since the agent started (counters).

    ``kind`` is ``base`` (a base backup, listed) or ``wal`` (an archived segment) for
    PostgreSQL, ``snapshot`` for the snapshot agent (``kinds``: those whose upload counters
    show from the start, at 0). The base backup's time is read from the bucket's newest
    listing at start, so a restarted agent reports the real age, not none.
    """

    def __init__(self, component: str, kinds: tuple[str, ...] = ("base", "wal")) -> None:
        self.component, self.kinds = component, kinds
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._counts: dict[tuple[str, str], int] = {}

    def succeeded(self, kind: str, at: "dt.datetime | None" = None) -> None:
        when = (at or utcnow()).timestamp()
        with self._lock:
            self._last[kind] = max(when, self._last.get(kind, 0.0))
            if at is None:
                self._counts[(kind, "success")] = self._counts.get((kind, "success"), 0) + 1

    def failed(self, kind: str) -> None:
        with self._lock:
            self._counts[(kind, "failure")] = self._counts.get((kind, "failure"), 0) + 1

    def render(self, now: "dt.datetime | None" = None) -> str:
        now_s = (now or utcnow()).timestamp()
        with self._lock:
            last, counts = dict(self._last), dict(self._counts)
        kinds = sorted({*last, *(k for k, _ in counts), *self.kinds})
        c = self.component
        lines = ["# HELP final_problem_backup_last_success_timestamp_seconds When the last backup went up and was "
                 "read back.", "# TYPE final_problem_backup_last_success_timestamp_seconds gauge"]
        lines += [f'final_problem_backup_last_success_timestamp_seconds{{component="{c}",kind="{k}"}} {last[k]:.3f}'
                  for k in kinds if k in last]
        lines += ["# HELP final_problem_backup_age_seconds Seconds since the last successful backup.",
                  "# TYPE final_problem_backup_age_seconds gauge"]
        lines += [f'final_problem_backup_age_seconds{{component="{c}",kind="{k}"}} {max(0.0, now_s - last[k]):.3f}'
                  for k in kinds if k in last]
        lines += ["# HELP final_problem_backup_uploads_total Backup uploads since the agent started, by result.",
                  "# TYPE final_problem_backup_uploads_total counter"]
        lines += [f'final_problem_backup_uploads_total{{component="{c}",kind="{k}",result="{r}"}} '
                  f'{counts.get((k, r), 0)}' for k in kinds for r in ("success", "failure")]
        return "\n".join(lines) + "\n"

    def serve(self, port: int, host: str = "") -> "object":
        """Answer ``GET /metrics`` on ``port`` from a daemon thread; returns the server."""
        import http.server

        metrics = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404)
                    return
                body = metrics.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass  # a scrape every few seconds is not news

        try:
            server = http.server.ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            raise BackupError(f"metrics: cannot listen on port {port} ({e.strerror}); choose another "
                              "--metrics-port") from None
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        return server


# -- the sidecar -------------------------------------------------------------------------------

def agent_pass(pg: Postgres, spool: str, retention_days: int, metrics: Metrics | None = None) -> int:
    """Upload what the spool holds; return how many items went up. ``metrics`` counts each
    upload that succeeded or failed."""
    metrics = metrics or Metrics("postgres")
    done = 0
    wal = os.path.join(spool, "wal")
    if os.path.isdir(wal):
        for name in sorted(os.listdir(wal)):
            path = os.path.join(wal, name)
            # Segments, timeline histories, backup history files (``.backup``), ``.partial``
            # segments at a promotion: whatever the server archives.
            if not name.endswith((".tmp", ".done")) and not os.path.exists(path + ".done"):
                try:
                    pg.upload_wal(path)
                except FileNotFoundError:
                    continue  # the archive command saw it done and removed it since the listing
                except BackupError:
                    metrics.failed("wal")
                    raise
                metrics.succeeded("wal")
                done += 1
    base = os.path.join(spool, "base")
    if os.path.isdir(base):
        for name in sorted(os.listdir(base)):
            if name.endswith(".ready") and os.path.exists(os.path.join(base, name[:-6] + ".end")):
                try:
                    backup_id = pg.upload_base(os.path.join(base, name), os.path.join(base, name[:-6] + ".end"),
                                               retention_days)
                except BackupError:
                    metrics.failed("base")
                    raise
                metrics.succeeded("base")
                write_atomic(os.path.join(base, "last-uploaded"), backup_id + "\n")
                print(f"base backup {backup_id} uploaded and listed", flush=True)
                done += 1
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="backup-agent")
    sub = parser.add_subparsers(dest="command", required=True)
    agent = sub.add_parser("agent", help="upload spooled WAL and base backups, forever")
    agent.add_argument("--spool", required=True)
    agent.add_argument("--once", action="store_true", help="one pass, then exit")
    agent.add_argument("--interval-s", type=float, default=0.5)
    agent.add_argument("--retention-days", type=int, default=7)
    agent.add_argument("--metrics-port", type=int, default=0,
                       help="serve the freshness metrics on this port (0: not served)")
    restore = sub.add_parser("restore-postgres", help="restore onto an empty data directory, to a time")
    restore.add_argument("--to", required=True)
    restore.add_argument("--pgdata", required=True)
    restore.add_argument("--wal-dir", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "restore-postgres":
            pg = Postgres(S3.from_env(), os.environ.get("BACKUP_S3_PREFIX", ""))
            print(pg.restore(target=parse_time(args.to), pgdata=args.pgdata, wal_dir=args.wal_dir))
            return 0
        metrics = Metrics("postgres")
        if args.metrics_port:
            metrics.serve(args.metrics_port)
        pg = Postgres(S3.from_env(), os.environ.get("BACKUP_S3_PREFIX", "")) if args.once else None
        while True:
            try:
                if pg is None:
                    # In the loop: a target that is missing or down at start is waited for and
                    # said every few seconds, never a restart that would take the server's pod
                    # out of its Service.
                    candidate = Postgres(S3.from_env(), os.environ.get("BACKUP_S3_PREFIX", ""))
                    candidate.s3.create_bucket()
                    newest = candidate.listings()[-1:]
                    if newest:
                        metrics.succeeded("base", at=newest[0]["ended"])
                    pg = candidate
                agent_pass(pg, args.spool, args.retention_days, metrics)
            except BackupError as e:
                if args.once:
                    raise
                # The archive command keeps waiting (and PostgreSQL retries it): say why, try again.
                print(e, file=sys.stderr, flush=True)
                time.sleep(5)
            if args.once:
                return 0
            time.sleep(args.interval_s)
    except BackupError as e:
        print(e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
