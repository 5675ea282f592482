"""Ranged GETs of presigned URLs: the request S3 sees from boto3, at a quarter of the client's CPU.

boto3 spends ~2 ms of CPU on each request (parameter validation, its event hooks, signing, parsing the
answer); measured against the test server, a ~512 KiB ranged GET cost 2.2 ms of client CPU through
`get_object` and 0.55 ms as a plain HTTP GET of a presigned URL.  A mount makes a GET for every random read
and every 8 MiB of a sequential one, and on a 2-core machine shared with the reader that CPU is the mount's
throughput.

So each object gets a URL presigned by the store's own client (SigV4 query-string auth, with its credentials,
endpoint and addressing style), reused for a few minutes, and a ranged read is one plain GET of it with a
`Range` (and `If-Match`) header over kept-alive connections (`httpget`).  An answer with exactly the bytes
asked for is taken; 404, 412 and 5xx become the ClientError boto3 would raise.  A cached URL that is
refused (400/403: the credentials that signed it rotated) is signed anew and tried once more.  Anything else
(a redirect, a signature refused again, a TLS failure) is left to boto3: the caller repeats the read through
`get_object`, which raises the canonical error or succeeds, and a path that keeps failing where boto3
succeeds (a bucket in another region, a server that refuses query-string auth, a private CA boto3 was told
about) is switched off.  With a proxy in the environment, or no credentials to sign with, it is never used.
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
import urllib.parse

import cachetools
from botocore.exceptions import ClientError

from quiltmount.storage.httpget import HostConnections, direct_connection_possible

log = logging.getLogger(__name__)

#: A URL is signed to stay valid this long (seconds) ...
URL_LIFETIME = 900
#: ... and used for at most this long, so it never runs into its own expiry or that of the credentials that
#: signed it (botocore refreshes temporary credentials at least 10 minutes before they expire).
URL_REUSE = 300.0
#: Reads boto3 had to answer instead, in a row, before the path is switched off for the bucket.
STRIKES = 3


class PresignedRanges:
    """Ranged GETs of one bucket's objects through presigned URLs (see the module docstring)."""

    def __init__(self, client, bucket: str, timeout: float) -> None:
        self._client = client
        self._bucket = bucket
        self._timeout = timeout
        self._lock = threading.Lock()
        #: (key, version) -> (path?query, connections, URL without its query for messages)
        self._urls: cachetools.TTLCache[tuple[str, str | None], tuple[str, HostConnections, str]] = \
            cachetools.TTLCache(4096, URL_REUSE)
        self._hosts: dict[tuple[str, str, int | None], HostConnections] = {}
        self._strikes = 0
        try:  # signing is local: a URL tells where requests go, and whether a proxy is in the way
            probe = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "probe"})
        except Exception as exc:  # no credentials yet, say: boto3 will have its say
            log.debug("s3://%s: cannot presign (%s); ranged reads go through boto3", bucket, exc)
            probe = None
        self.enabled = probe is not None and direct_connection_possible(probe)

    def _target(self, key: str, version_id: str | None, fresh: bool = False) -> tuple[str, HostConnections, str]:
        """(path?query, connections, URL without its query) of the object's URL; `fresh`: sign it anew."""
        with self._lock:
            target = None if fresh else self._urls.get((key, version_id))
        if target is not None:
            return target
        params = {"Bucket": self._bucket, "Key": key}
        if version_id:
            params["VersionId"] = version_id
        url = self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=URL_LIFETIME)
        parts = urllib.parse.urlsplit(url)
        host = (parts.scheme, parts.hostname or "", parts.port)
        with self._lock:
            if host not in self._hosts:
                self._hosts[host] = HostConnections(*host, timeout=self._timeout)
            target = (f"{parts.path}?{parts.query}", self._hosts[host], f"{parts.scheme}://{parts.netloc}{parts.path}")
            self._urls[(key, version_id)] = target
        return target

    def get(self, key: str, version_id: str | None, etag: str | None, start: int,
            end: int) -> tuple[bytes | None, int]:
        """(bytes [start, end) of the object, HTTP status), or (None, status) when S3 answered something else:
        ask boto3.  Network failures raise botocore's exceptions and a 5xx answer a ClientError, as a
        `get_object` would, and so do 404 and 412 (the object is gone or changed): those are for the caller's
        retries or error, not for a second request at once."""
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if etag and not version_id:
            headers["If-Match"] = etag
        with self._lock:
            signed_before = (key, version_id) in self._urls
        # A URL signed a while ago may have outlived the credentials that signed it (they rotate): a refusal of
        # such a URL gets one more try with a URL signed now, before boto3 is asked.
        for fresh in (False, True) if signed_before else (True,):
            target, connections, where = self._target(key, version_id, fresh)
            try:
                answer = connections.get(target, headers, where)
            except ssl.SSLError as exc:
                log.debug("presigned GET of %r: %s; asking boto3", key, exc)
                return None, 0
            status = answer.status
            if status == 206 and answer.length == end - start:
                return answer.read(), status
            if status >= 500 or status in (404, 412):  # unambiguous: boto3 would get the same answer
                raise _client_error(status, answer.read() if (answer.length or 0) <= 1 << 16 else answer.discard())
            answer.discard()
            if status not in (400, 403):
                break
        with self._lock:
            self._urls.pop((key, version_id), None)  # another region, say: a new URL next time
        log.debug("presigned GET of %r answered %d; asking boto3", key, status)
        return None, status

    def answered(self) -> None:
        """The presigned path answered a read."""
        if self._strikes:
            with self._lock:
                self._strikes = 0

    def boto3_answered(self, status_note: str) -> None:
        """boto3 read what the presigned path could not: after STRIKES in a row, stop using the path."""
        with self._lock:
            self._strikes += 1
            if self._strikes < STRIKES or not self.enabled:
                return
            self.enabled = False
        log.warning("s3://%s: presigned ranged GETs keep failing where boto3 succeeds (%s); "
                    "reading through boto3 only", self._bucket, status_note)

    def close(self) -> None:
        with self._lock:
            hosts = list(self._hosts.values())
        for connections in hosts:
            connections.close()


def _client_error(status: int, body: bytes) -> ClientError:
    """The ClientError boto3 raises for an error answer (S3's error XML: <Code>, <Message>)."""
    code, message = (re.search(rb"<%s>(.*?)</%s>" % (name, name), body) for name in (b"Code", b"Message"))
    error = {"Code": code.group(1).decode(errors="replace") if code else str(status),
             "Message": message.group(1).decode(errors="replace") if message else ""}
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
