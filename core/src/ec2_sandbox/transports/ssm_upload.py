"""Reads through an output bucket: the instance PUTs a range in parts, the client GETs them.

One runner command reads the range (dir fds, the owner's checks) and PUTs it, cut into up to
:data:`UPLOAD_PARTS` parts sent at once, to presigned URLs for fresh keys; then it PUTs a *manifest*: the
runner's envelope (each part's size and SHA-256) with an HMAC under a secret that travelled only in the
command's header (never in the request, which may be staged in the bucket itself). The client looks for the
manifest in S3 while it polls SSM, so the bytes come as soon as they are in the bucket rather than when SSM
next reports the command done; whichever answer comes first is used.

Trust: a manifest whose HMAC does not check, or that describes no upload, is ignored (and the bucket no
longer looked at), so anyone who can read and write the bucket but cannot read the command can neither
forge the digests nor swap the bytes; every part is checked against its size before it is read and its
digest before any of it is handed on, and a manifest is read no further than a manifest can be long.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import TransportError

log = logging.getLogger(__name__)

#: Parts one command uploads at most, and the fewest bytes worth a part of their own: S3 takes parallel
#: connections faster than one (AWS's "Performance design patterns for Amazon S3").
UPLOAD_PARTS, UPLOAD_PART_BYTES = 4, 4 << 20
#: Seconds between looks for the manifest: at least POLL_MIN, then POLL_GROWTH of the time waited so far,
#: at most POLL_MAX. A look is one GetObject, which S3 serves by the thousand per second and prefix.
POLL_MIN, POLL_GROWTH, POLL_MAX = 0.05, 0.1, 1.0
#: The most a manifest may be (the runner's envelope for a read: a few hundred bytes).
MANIFEST_BYTES = 64 << 10
#: Answers to a GetObject of a key not there yet: NoSuchKey, or AccessDenied without s3:ListBucket.
NOT_YET = {"NoSuchKey", "404", "NotFound", "AccessDenied", "403"}


class ForgedManifest(TransportError):
    """A manifest in the bucket that the instance did not write."""


@dataclass
class Upload:
    """One range's keys in the bucket, and the secret its manifest is signed with."""

    bucket: str
    prefix: str
    secret: bytes = field(repr=False)

    @classmethod
    def new(cls, bucket: str, root: str) -> Upload:
        return cls(bucket, f"{root}/reads/{secrets.token_hex(16)}", secrets.token_bytes(32))

    def part_key(self, index: int) -> str:
        return f"{self.prefix}/{index}"

    @property
    def manifest_key(self) -> str:
        return f"{self.prefix}/done"

    def keys(self) -> list[str]:
        return [self.part_key(i) for i in range(UPLOAD_PARTS)] + [self.manifest_key]

    def request(self, s3: Any, expires: int) -> dict[str, Any]:
        """What the instance is asked for (the request's ``upload``): a URL per part and one for the
        manifest, the least bytes per part. The secret goes in the command's header instead (the request
        may be staged in the bucket). Signing URLs is local: no call to S3."""

        def url(key: str) -> str:
            return str(
                s3.generate_presigned_url(
                    "put_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires
                )
            )

        return {
            "parts": [url(self.part_key(i)) for i in range(UPLOAD_PARTS)],
            "done": url(self.manifest_key),
            "part": UPLOAD_PART_BYTES,
        }

    def manifest(self, s3: Any) -> dict[str, Any] | None:
        """The runner's envelope from the manifest, or None while there is none (blocking)."""
        try:
            # No more than a manifest can hold: anyone may have written there.
            body = s3.get_object(
                Bucket=self.bucket, Key=self.manifest_key, Range=f"bytes=0-{MANIFEST_BYTES - 1}"
            )["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
            if str(code) not in NOT_YET:  # SSM's answer will do: the look was a shortcut
                log.debug("could not look for s3://%s/%s: %s", self.bucket, self.manifest_key, exc)
            return None
        text, _, mac = body.rpartition(b"\n")
        if not hmac.compare_digest(mac, hmac.new(self.secret, text, hashlib.sha256).hexdigest().encode()):
            raise ForgedManifest(f"s3://{self.bucket}/{self.manifest_key} is not signed by the instance")
        try:
            envelope = json.loads(text)["envelope"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ForgedManifest(f"s3://{self.bucket}/{self.manifest_key} is not a runner envelope") from exc
        if not isinstance(envelope, dict):
            raise ForgedManifest(f"s3://{self.bucket}/{self.manifest_key} is not a runner envelope")
        return envelope

    def parts(self, uploaded: dict[str, Any], span: int) -> list[tuple[str, int, str]]:
        """``(key, size, sha256)`` of each part the instance says it uploaded, checked for sense."""
        parts = uploaded.get("parts")
        if (
            not isinstance(parts, list)
            or not 0 < len(parts) <= UPLOAD_PARTS
            or not all(
                isinstance(p, list)
                and len(p) == 2
                and isinstance(p[0], int)
                and p[0] >= 0
                and isinstance(p[1], str)
                for p in parts
            )
            or sum(p[0] for p in parts) != uploaded.get("bytes")
            or uploaded.get("bytes", 0) > span
        ):
            raise TransportError(f"the instance described its upload to s3://{self.bucket} wrongly: {parts}")
        return [(self.part_key(i), size, digest) for i, (size, digest) in enumerate(parts)]

    def fetch(self, s3: Any, key: str, size: int) -> tuple[bytes, str]:
        """One part and its SHA-256 (blocking; hashing releases the GIL, so parts fetched at once overlap).
        A part of another size than the instance's is not read: it is not the instance's."""
        try:
            reply = s3.get_object(Bucket=self.bucket, Key=key)
            if reply.get("ContentLength") != size:
                reply["Body"].close()
                return b"", ""
            data = reply["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise TransportError(
                f"could not read s3://{self.bucket}/{key}, which the instance uploaded: {exc}; these "
                "credentials need s3:GetObject on the bucket"
            ) from exc
        return data, hashlib.sha256(data).hexdigest()

    def delete(self, s3: Any) -> None:
        reply = s3.delete_objects(
            Bucket=self.bucket,
            Delete={"Objects": [{"Key": key} for key in self.keys()], "Quiet": True},
        )
        if reply.get("Errors"):
            failed = ", ".join(f"{e.get('Key')} ({e.get('Code')})" for e in reply["Errors"])
            raise TransportError(f"s3://{self.bucket} kept {failed}: add a lifecycle rule to the bucket")
