"""Reads through an output bucket: parts PUT at once, the signed manifest that ends the wait, and what
someone who can write to the bucket (but cannot read the command) can and cannot do to a read."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import zlib
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
import test_ssm
from test_ssm import REGION, config_for, quick

from ec2_sandbox import AsyncSandbox, SandboxConfig
from ec2_sandbox.errors import TaskNotFoundError, TransportError
from ec2_sandbox.testing import ssm_standin
from ec2_sandbox.transports import ssm_upload
from ec2_sandbox.transports.ssm import SsmTransport
from ec2_sandbox.transports.ssm_upload import ForgedManifest, Upload

ssm_server, standin, instance_id = test_ssm.ssm_server, test_ssm.standin, test_ssm.instance_id
SIZE = 12_000_000  # two parts of at least UPLOAD_PART_BYTES


@pytest.fixture
def bucket(ssm_server: ssm_standin.Server) -> Any:
    """A fresh bucket in the stand-in's S3, and a client for it (someone allowed to write to it)."""
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=ssm_server.url)
    name = f"ec2sb-up-{os.urandom(4).hex()}"
    s3.create_bucket(Bucket=name)
    return s3, name


@dataclass
class Reads:
    """A sandbox's settings for reads through ``bucket``, its transport, and the bucket."""

    s3: Any
    bucket: str
    config: SandboxConfig
    transport: SsmTransport

    def sandbox(self) -> AsyncSandbox:
        return AsyncSandbox(self.config, transport=self.transport)


@pytest.fixture
def reads(standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str, bucket: Any) -> Reads:
    s3, name = bucket
    config = config_for(instance_id, tmp_base_dir, max_file_size_mb=20, s3_bucket=name)
    return Reads(s3, name, config, quick(config))


async def big_file(sandbox: AsyncSandbox, base: str) -> tuple[str, bytes]:
    made = await sandbox.execute_code(f"import os\nopen('big.bin', 'wb').write(os.urandom({SIZE}))")
    assert made.success, made
    with open(os.path.join(base, "tasks", made.task_hash, "big.bin"), "rb") as fh:
        return made.task_hash, fh.read()


def hold_polls(transport: SsmTransport, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """SSM reports nothing until the returned event is set (an API that is slow to say a command ended)."""
    release, real = asyncio.Event(), transport._poll

    async def held(*args: Any, **kwargs: Any) -> dict[str, Any]:
        await release.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(transport, "_poll", held)
    return release


def signed(secret: bytes, envelope: dict[str, Any]) -> bytes:
    body = json.dumps({"envelope": envelope}, separators=(",", ":"))
    return (body + "\n" + hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()).encode()


async def test_the_bytes_come_once_the_signed_manifest_is_in_the_bucket(
    standin: ssm_standin.StandIn, reads: Reads, tmp_base_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read ends without SSM's answer: the parts (PUT at once) come as soon as the instance's manifest
    is there. SSM's answer is still collected afterwards, and only then are the keys deleted."""
    s3, name = reads.s3, reads.bucket
    async with reads.sandbox() as sandbox:
        task, expected = await big_file(sandbox, tmp_base_dir)
        release = hold_polls(reads.transport, monkeypatch)
        try:
            got = await asyncio.wait_for(sandbox.get_task_files(task, "big.bin"), 60)
            listed = s3.list_objects_v2(Bucket=name, Prefix="ec2-sandbox/reads/").get("Contents", [])
        finally:
            release.set()
        assert got == expected
        assert len(listed) == 3  # two parts and the manifest, kept while the command may still run
    (read,) = [inv for inv in standin.invocations.values() if '"uploaded":' in inv.stdout]
    assert len(json.loads(read.stdout)["envelope"]["result"]["uploaded"]["parts"]) == 2
    assert s3.list_objects_v2(Bucket=name).get("KeyCount", 0) == 0


@pytest.mark.parametrize("key", ["the instance's", "another"])
async def test_a_manifest_counts_only_when_signed_with_the_commands_secret(
    key: str,
    standin: ssm_standin.StandIn,
    reads: Reads,
    tmp_base_dir: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Someone who can write to the bucket learns the keys of a read and puts a manifest and a part of
    their own there before the instance does. Unsigned, it is ignored and the read waits for SSM's answer,
    whose digests the instance's own bytes match. The positive control signs it with the command's secret:
    then the client does take it, which shows the signature is all that stops it."""
    s3, name = reads.s3, reads.bucket
    planted = b"planted by someone else"
    async with reads.sandbox() as sandbox:
        task, expected = await big_file(sandbox, tmp_base_dir)
        standin.delivery_latency = 1.0  # the client looks at the bucket before the instance writes to it
        real_request = Upload.request

        def request(upload: Upload, client: Any, expires: int) -> dict[str, Any]:
            secret = upload.secret if key == "the instance's" else os.urandom(32)
            envelope = {
                "ok": True,
                "result": {
                    "path": "big.bin",
                    "size": len(planted),
                    "offset": 0,
                    "uploaded": {
                        "bytes": len(planted),
                        "parts": [[len(planted), hashlib.sha256(planted).hexdigest()]],
                    },
                },
            }
            s3.put_object(Bucket=name, Key=upload.part_key(0), Body=planted)
            s3.put_object(Bucket=name, Key=upload.manifest_key, Body=signed(secret, envelope))
            return real_request(upload, client, expires)

        monkeypatch.setattr(Upload, "request", request)
        with caplog.at_level(logging.WARNING):
            got = await sandbox.get_task_files(task, "big.bin")
    if key == "the instance's":
        assert got == planted.decode()
    else:
        assert got == expected
        assert any("is not signed by the instance" in r.getMessage() for r in caplog.records)
    assert s3.list_objects_v2(Bucket=name).get("KeyCount", 0) == 0


@pytest.mark.parametrize(
    "change",
    [lambda body: body[:-1] + bytes([body[-1] ^ 1]), lambda body: body + b"more"],
    ids=["a bit flipped", "grown"],
)
async def test_a_part_changed_in_the_bucket_is_never_handed_on(
    change: Any, reads: Reads, tmp_base_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part overwritten between the instance's PUT and the client's GET fails its digest (or its size,
    before it is read): the read raises, and none of its bytes reach the caller's sink. The unchanged read
    is the control."""
    s3, name = reads.s3, reads.bucket
    async with reads.sandbox() as sandbox:
        task, expected = await big_file(sandbox, tmp_base_dir)
        assert await sandbox.get_task_files(task, "big.bin") == expected
        real_fetch = Upload.fetch

        def fetch(upload: Upload, client: Any, part: str, size: int) -> tuple[bytes, str]:
            if part.endswith("/1"):
                body = s3.get_object(Bucket=name, Key=part)["Body"].read()
                s3.put_object(Bucket=name, Key=part, Body=change(body))
            return real_fetch(upload, client, part, size)

        monkeypatch.setattr(Upload, "fetch", fetch)
        handed: list[bytes] = []
        with pytest.raises(TransportError, match="came back other than the instance sent it"):
            await sandbox.download_task_file(task, "big.bin", handed.append)
        assert handed == []
    assert s3.list_objects_v2(Bucket=name).get("KeyCount", 0) == 0


def test_the_manifest_is_looked_for_safely(ssm_server: ssm_standin.Server, bucket: Any) -> None:
    """No manifest yet is None; one signed with the secret is the envelope; anything else is forged."""
    s3, name = bucket
    upload = Upload.new(name, "ec2-sandbox")
    assert upload.manifest(s3) is None
    envelope = {"ok": True, "result": {"size": 1}}
    s3.put_object(Bucket=name, Key=upload.manifest_key, Body=signed(upload.secret, envelope))
    assert upload.manifest(s3) == envelope
    for body in (signed(os.urandom(32), envelope), b"no signature", signed(upload.secret, envelope)[:-1]):
        s3.put_object(Bucket=name, Key=upload.manifest_key, Body=body)
        with pytest.raises(ForgedManifest):
            upload.manifest(s3)


@pytest.mark.parametrize(
    "uploaded",
    [
        {"bytes": 10, "parts": []},
        {"bytes": 10, "parts": [[5, "a"], [4, "b"]]},  # the sizes do not add up
        {"bytes": 10, "parts": [[10, 5]]},
        {"bytes": 10, "parts": [[-1, "a"], [11, "b"]]},
        {"bytes": 10, "parts": [[2, "a"]] * 5},  # more parts than URLs
        {"bytes": 100, "parts": [[100, "a"]]},  # more than was asked for
        {"bytes": 10, "parts": "10"},
    ],
)
def test_an_upload_described_wrongly_is_refused(uploaded: dict[str, Any]) -> None:
    upload = Upload.new("bucket", "ec2-sandbox")
    with pytest.raises(TransportError, match="described its upload"):
        upload.parts(uploaded, span=50)
    assert upload.parts({"bytes": 10, "parts": [[6, "a"], [4, "b"]]}, span=50) == [
        (upload.part_key(0), 6, "a"),
        (upload.part_key(1), 4, "b"),
    ]
    assert len(upload.keys()) == ssm_upload.UPLOAD_PARTS + 1


async def test_the_manifest_key_is_never_in_the_bucket(
    standin: ssm_standin.StandIn, reads: Reads, tmp_base_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request too large for one command (here: any carrying the runner) is staged in the bucket: the
    manifest's key travels in the command's header, never in what is staged, so whoever can read the
    bucket cannot sign a manifest. Control: the staged request is there, with the read's presigned URLs."""
    staged: list[bytes] = []
    secrets_used: list[bytes] = []
    reads.transport = quick(reads.config, max_command_chars=20_000)
    real_new, real_client = Upload.new, reads.transport.client

    def new(bucket: str, root: str) -> Upload:
        made = real_new(bucket, root)
        secrets_used.append(made.secret)
        return made

    def client(service: str) -> Any:
        made = real_client(service)
        if service == "s3":
            put = made.put_object

            def keep(**kwargs: Any) -> Any:
                staged.append(zlib.decompress(kwargs["Body"]))
                return put(**kwargs)

            monkeypatch.setattr(made, "put_object", keep)
        return made

    monkeypatch.setattr(Upload, "new", new)
    monkeypatch.setattr(reads.transport, "client", client)
    async with reads.sandbox() as sandbox:  # a new client's first command: a read
        with pytest.raises(TaskNotFoundError):
            await sandbox.get_task_files("0" * 32, "x.bin")
    (secret,) = secrets_used
    assert staged and any(b'"upload":{"parts":["http' in blob for blob in staged)
    assert not any(secret.hex().encode() in blob or secret in blob for blob in staged)
    scripts = [inv.script.split("\n") for inv in standin.invocations.values()]
    headers = [json.loads(base64.b64decode(lines[3])) for lines in scripts]
    assert [h.get("mac") for h in headers if h.get("mac")] == [secret.hex()]
