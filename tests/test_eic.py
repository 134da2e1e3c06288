"""The ``eic`` transport: moto's EC2 for the instance, a private sshd whose AuthorizedKeysCommand serves the
keys that (a patched) ``send_ssh_public_key`` stored with an expiry - as EC2 Instance Connect does on an
instance.

Every connection goes to 127.0.0.1 (``ssh_host``), or through a local websocket server standing in for the
EIC Endpoint: no test traffic leaves this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncssh
import boto3
import pytest
from botocore.credentials import Credentials
from moto import mock_aws
from support.runs import run_in_flight
from support.sshd import EicKeyStore, Sshd, requires_sshd, running_sshd

from ec2_sandbox import AsyncSandbox, SandboxConfig, aws_session
from ec2_sandbox.errors import ConfigError, TransportError
from ec2_sandbox.testing import eic_endpoints
from ec2_sandbox.testing.conformance import ConformanceSuite
from ec2_sandbox.transports.eic import (
    EICTransport,
    endpoint_dns_name,
    presigned_tunnel_url,
    websocket_connect,
)

pytestmark = requires_sshd

REGION = "us-east-1"
ENDPOINT_ID = "eice-0123456789abcdef0"
#: One of the images moto knows (looking them up costs seconds).
AMI = "ami-03cf127a"
ENDPOINT_DNS = f"{ENDPOINT_ID}.ec2-instance-connect-endpoint.{REGION}.amazonaws.com"


@pytest.fixture(scope="module")
def sshd() -> Iterator[Sshd]:
    with running_sshd() as server:
        yield server


@pytest.fixture(scope="module")
def aws() -> Iterator[None]:
    """moto's AWS for the whole module (starting it costs seconds: once is enough)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLETESTKEY01")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        aws_session.clear_clients()
        eic_endpoints.install()  # moto has no EIC Endpoints: the stand-in's, as strict as the API reference
        with mock_aws():
            yield
        eic_endpoints.reset()
        aws_session.clear_clients()


def launch(ec2: Any = None) -> dict[str, Any]:
    ec2 = ec2 or boto3.client("ec2", region_name=REGION)
    instance_id = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="t3.micro")[
        "Instances"
    ][0]["InstanceId"]
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


@pytest.fixture(scope="module")
def instance(aws: None) -> dict[str, Any]:
    return launch()


@pytest.fixture(scope="module")
def _moto_pushes_into_sshd(sshd: Sshd, aws: None) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        sshd.eic_keys.patch_moto(patch)
        yield


@pytest.fixture
def key_store(sshd: Sshd, _moto_pushes_into_sshd: None) -> Iterator[EicKeyStore]:
    """The sshd's EIC key store with its usual 60-second expiry, fed by moto's send_ssh_public_key."""
    store = sshd.eic_keys
    store.ttl = 60.0
    store.pushes.clear()
    yield store
    store.expire_all()


def eic_config(
    sshd: Sshd, instance: dict[str, Any], base_dir: str, tmp: Path, **changes: Any
) -> SandboxConfig:
    fields: dict[str, Any] = {
        "transport": "eic",
        "instance_id": instance["InstanceId"],
        "region": REGION,
        "ssh_user": "root",
        "ssh_host": "127.0.0.1",
        "ssh_port": sshd.port,
        "ssh_known_hosts": str(tmp / "known_hosts"),
        "base_sandbox_dir": base_dir,
    }
    fields.update(changes)
    return SandboxConfig(**fields)


class TestEICConformance(ConformanceSuite):
    @pytest.fixture
    async def sandbox(
        self,
        sshd: Sshd,
        instance: dict[str, Any],
        key_store: EicKeyStore,
        tmp_base_dir: str,
        tmp_path: Path,
    ) -> AsyncIterator[AsyncSandbox]:
        async with AsyncSandbox(eic_config(sshd, instance, tmp_base_dir, tmp_path)) as sb:
            yield sb


# ---------------------------------------------------------------------------------------------- keys
def spy_on_keys(transport: EICTransport) -> list[asyncssh.SSHKey]:
    pushed: list[asyncssh.SSHKey] = []
    original = transport.push_key

    async def push_key(instance: dict[str, Any]) -> asyncssh.SSHKey:
        key = await original(instance)
        pushed.append(key)
        return key

    transport.push_key = push_key  # type: ignore[method-assign]
    return pushed


async def test_key_is_pushed_once_per_connection_for_the_configured_user(
    sshd: Sshd, instance: dict[str, Any], key_store: EicKeyStore, tmp_base_dir: str, tmp_path: Path
) -> None:
    async with AsyncSandbox(eic_config(sshd, instance, tmp_base_dir, tmp_path)) as sb:
        for i in range(3):
            assert (await sb.execute_code(f"print({i})")).stdout == f"{i}\n"
        transport = sb.transport
        assert isinstance(transport, EICTransport)
        assert transport.keys_pushed == 1 and transport.connections_opened == 1
    [push] = key_store.pushes
    assert push["InstanceId"] == instance["InstanceId"]
    assert push["InstanceOSUser"] == "root"
    assert push["AvailabilityZone"] == instance["Placement"]["AvailabilityZone"]
    assert push["SSHPublicKey"].startswith("ssh-ed25519 ")
    # Host keys are pinned to the instance id, not the address.
    assert (tmp_path / "known_hosts").read_text().startswith(f"[{instance['InstanceId']}]:{sshd.port} ")


async def test_open_connection_survives_key_expiry_and_a_new_one_pushes_again(
    sshd: Sshd, instance: dict[str, Any], key_store: EicKeyStore, tmp_base_dir: str, tmp_path: Path
) -> None:
    key_store.ttl = 5.0
    async with AsyncSandbox(eic_config(sshd, instance, tmp_base_dir, tmp_path)) as sb:
        transport = sb.transport
        assert isinstance(transport, EICTransport)
        pushed = spy_on_keys(transport)
        assert (await sb.execute_code("print('fresh')")).success
        await asyncio.sleep(key_store.ttl + 0.5)
        # Expired: the same key can no longer open a new connection...
        with pytest.raises(asyncssh.PermissionDenied):
            await asyncssh.connect(
                "127.0.0.1", sshd.port, username="root", client_keys=pushed, known_hosts=None, config=None
            )
        # ...but the open connection carries on.
        assert (await sb.execute_code("print('after expiry')")).stdout == "after expiry\n"
        assert transport.keys_pushed == 1 and transport.connections_opened == 1
        # The connection drops: the next run pushes a new key and reconnects by itself.
        state = transport._state
        assert state is not None
        state.conn.close()
        await state.conn.wait_closed()
        assert (await sb.execute_code("print('reconnected')")).stdout == "reconnected\n"
        assert transport.keys_pushed == 2 and transport.connections_opened == 2
        assert len(pushed) == 2 and pushed[0] != pushed[1]


async def test_killed_sshd_fails_the_run_in_flight_and_the_next_run_pushes_a_new_key(
    instance: dict[str, Any],
    key_store: EicKeyStore,
    monkeypatch: pytest.MonkeyPatch,
    tmp_base_dir: str,
    tmp_path: Path,
) -> None:
    with running_sshd() as own:
        own.eic_keys.patch_moto(monkeypatch)
        async with AsyncSandbox(eic_config(own, instance, tmp_base_dir, tmp_path)) as sb:
            run = await run_in_flight(sb, 8)
            own.kill()
            with pytest.raises(TransportError, match="was lost while the runner was running"):
                await asyncio.wait_for(run, 60)
            own.start()
            assert (await sb.execute_code("print('back')")).stdout == "back\n"
            assert sb.transport.keys_pushed == 2  # type: ignore[attr-defined]


async def test_a_stopped_instance_is_reported_not_dialled(
    sshd: Sshd, instance: dict[str, Any], key_store: EicKeyStore, tmp_base_dir: str, tmp_path: Path
) -> None:
    instance = launch()
    boto3.client("ec2", region_name=REGION).stop_instances(InstanceIds=[instance["InstanceId"]])
    async with AsyncSandbox(eic_config(sshd, instance, tmp_base_dir, tmp_path)) as sb:
        with pytest.raises(TransportError, match=r"is stopped, not running"):
            await sb.execute_code("print(1)")
        status = await sb.instance_status()
    assert not status.healthy
    assert [p.name for p in status.parts if not p.ok] == ["instance", "probe"]
    assert key_store.pushes == []


async def test_unknown_instance_is_a_clear_error(
    sshd: Sshd, aws: None, key_store: EicKeyStore, tmp_base_dir: str, tmp_path: Path
) -> None:
    fake = {"InstanceId": "i-0123456789abcdef0"}
    async with AsyncSandbox(eic_config(sshd, fake, tmp_base_dir, tmp_path)) as sb:
        with pytest.raises(TransportError, match=r"cannot describe the instance .*InvalidInstanceID"):
            await sb.execute_code("print(1)")


async def test_status_has_the_ec2_facts_ssh_and_the_probe(
    sshd: Sshd, instance: dict[str, Any], key_store: EicKeyStore, tmp_base_dir: str, tmp_path: Path
) -> None:
    async with AsyncSandbox(eic_config(sshd, instance, tmp_base_dir, tmp_path)) as sb:
        status = await sb.instance_status()
    assert status.healthy, status
    assert status.transport == "eic" and status.target == instance["InstanceId"]
    parts = {p.name: p for p in status.parts}
    assert set(parts) == {"instance", "ssh", "probe"}
    assert parts["instance"].details["state"] == "running"
    assert parts["instance"].details["private_ip"] == instance["PrivateIpAddress"]
    assert parts["ssh"].details["host_key"].startswith("ssh-ed25519 SHA256:")
    assert any(r.name == "python3" and r.available for r in status.runtimes)


def test_address_choice(sshd: Sshd, instance: dict[str, Any], tmp_base_dir: str, tmp_path: Path) -> None:
    """Which address a connection would go to - decided without dialling any of them."""
    public = EICTransport(eic_config(sshd, instance, tmp_base_dir, tmp_path, ssh_host=None))
    assert public.address_of(instance) == instance["PublicIpAddress"]
    private = EICTransport(
        eic_config(sshd, instance, tmp_base_dir, tmp_path, ssh_host=None, eic_address="private")
    )
    assert private.address_of(instance) == instance["PrivateIpAddress"]
    override = EICTransport(eic_config(sshd, instance, tmp_base_dir, tmp_path))
    assert override.address_of(instance) == "127.0.0.1"
    no_public = {k: v for k, v in instance.items() if k != "PublicIpAddress"}
    with pytest.raises(TransportError, match="no public IP address: set eic_address to 'private'"):
        public.address_of(no_public)
    with pytest.raises(ConfigError, match="instance_id"):
        EICTransport(SandboxConfig(transport="eic"))


# ---------------------------------------------------------------------------------------------- endpoint
def test_presigned_url_shape() -> None:
    credentials = Credentials("AKIDEXAMPLE", "secret", "session-token")
    url = presigned_tunnel_url(
        credentials, REGION, ENDPOINT_DNS, ENDPOINT_ID, "10.1.2.3", remote_port=22, max_tunnel_duration=1800
    )
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("wss", ENDPOINT_DNS, "/openTunnel")
    query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    assert query["instanceConnectEndpointId"] == ENDPOINT_ID
    assert query["remotePort"] == "22"
    assert query["privateIpAddress"] == "10.1.2.3"
    assert query["maxTunnelDuration"] == "1800"
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert re.fullmatch(
        rf"AKIDEXAMPLE/\d{{8}}/{REGION}/ec2-instance-connect/aws4_request", query["X-Amz-Credential"]
    )
    assert re.fullmatch(r"\d{8}T\d{6}Z", query["X-Amz-Date"])
    assert query["X-Amz-Expires"] == "60"
    assert query["X-Amz-SignedHeaders"] == "host"
    assert query["X-Amz-Security-Token"] == "session-token"
    assert re.fullmatch(r"[0-9a-f]{64}", query["X-Amz-Signature"])
    # Signed: the signature depends on every parameter.
    other = presigned_tunnel_url(
        credentials, REGION, ENDPOINT_DNS, ENDPOINT_ID, "10.1.2.4", remote_port=22, max_tunnel_duration=1800
    )
    assert parse_qs(urlsplit(other).query)["X-Amz-Signature"][0] != query["X-Amz-Signature"]


class FakeEndpoint:
    """A local stand-in for an EIC Endpoint: checks the openTunnel request, then relays binary frames to
    the test sshd (whatever private IP was asked for) and closes the tunnel after maxTunnelDuration."""

    def __init__(self, sshd_port: int) -> None:
        self.sshd_port = sshd_port
        self.requests: list[dict[str, str]] = []
        self.active = 0
        self._enders: list[asyncio.Event] = []
        self.port = 0
        self.server: Any = None

    async def __aenter__(self) -> FakeEndpoint:
        from websockets.asyncio.server import serve

        self.server = await serve(self.handle, "127.0.0.1", 0, max_size=None, compression=None)
        self.port = next(iter(self.server.sockets)).getsockname()[1]
        return self

    def end_tunnels(self) -> None:
        """End the open tunnels now, as their maxTunnelDuration would."""
        for ender in self._enders:
            ender.set()

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def handle(self, ws: Any) -> None:
        parts = urlsplit(ws.request.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.requests.append(query)
        if parts.path != "/openTunnel" or "X-Amz-Signature" not in query:
            await ws.close(1008, "not a signed openTunnel request")
            return
        reader, writer = await asyncio.open_connection("127.0.0.1", self.sshd_port)
        self.active += 1

        async def up() -> None:
            async for message in ws:
                assert isinstance(message, bytes), "the tunnel carries binary frames only"
                writer.write(message)
                await writer.drain()
            writer.close()

        async def down() -> None:
            while data := await reader.read(65536):
                await ws.send(data)

        ender = asyncio.Event()
        self._enders.append(ender)
        tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        limit = float(query.get("maxTunnelDuration", 3600))
        with contextlib.suppress(Exception):
            await asyncio.wait(
                [*tasks, asyncio.ensure_future(ender.wait())],
                timeout=limit,
                return_when=asyncio.FIRST_COMPLETED,
            )
        for task in tasks:
            task.cancel()
        writer.close()
        self.active -= 1
        await ws.close(1000, "tunnel duration reached")


def count_endpoint_lookups(config: SandboxConfig) -> list[dict[str, Any]]:
    """The DescribeInstanceConnectEndpoints requests the transport makes (moto's stand-in answers them)."""
    calls: list[dict[str, Any]] = []

    def before_call(params: dict[str, Any], **kwargs: Any) -> None:
        calls.append(params["body"])

    client = aws_session.client(config, "ec2")
    client.meta.events.register("before-call.ec2.DescribeInstanceConnectEndpoints", before_call)
    return calls


def create_endpoint(instance: dict[str, Any], wait: bool = True) -> dict[str, Any]:
    """An EIC Endpoint in the instance's subnet (moto's, from ec2_sandbox.testing.eic_endpoints)."""
    ec2 = boto3.client("ec2", region_name=REGION)
    created = ec2.create_instance_connect_endpoint(SubnetId=instance["SubnetId"])["InstanceConnectEndpoint"]
    endpoint_id = created["InstanceConnectEndpointId"]
    while wait and created["State"] != "create-complete":
        time.sleep(0.1)
        found = ec2.describe_instance_connect_endpoints(InstanceConnectEndpointIds=[endpoint_id])
        created = found["InstanceConnectEndpoints"][0]
    return created


@pytest.fixture
def endpoint(instance: dict[str, Any]) -> Iterator[dict[str, Any]]:
    created = create_endpoint(instance)
    yield created
    boto3.client("ec2", region_name=REGION).delete_instance_connect_endpoint(
        InstanceConnectEndpointId=created["InstanceConnectEndpointId"]
    )


@pytest.fixture
def via_endpoint(
    sshd: Sshd,
    instance: dict[str, Any],
    endpoint: dict[str, Any],
    key_store: EicKeyStore,
    tmp_base_dir: str,
    tmp_path: Path,
) -> SandboxConfig:
    """A configuration that reaches the test sshd through ``endpoint`` (keys pushed into the sshd's store)."""
    config = eic_config(sshd, instance, tmp_base_dir, tmp_path, ssh_host=None, ssh_port=22)
    return config.model_copy(update={"eic_endpoint_id": endpoint["InstanceConnectEndpointId"]})


def relay_to(endpoint: FakeEndpoint, dns_name: str, urls: list[str] | None = None) -> Any:
    """A tunnel connector that checks the URL is for ``dns_name`` and relays it to the local endpoint."""

    async def connector(url: str) -> Any:
        if urls is not None:
            urls.append(url)
        parts = urlsplit(url)
        assert parts.scheme == "wss" and parts.netloc == dns_name
        return await websocket_connect(f"ws://127.0.0.1:{endpoint.port}{parts.path}?{parts.query}")

    return connector


async def test_endpoint_tunnel_carries_ssh_and_reconnects_when_it_ends(
    sshd: Sshd,
    instance: dict[str, Any],
    endpoint: dict[str, Any],
    via_endpoint: SandboxConfig,
    tmp_path: Path,
) -> None:
    endpoint_id, config = endpoint["InstanceConnectEndpointId"], via_endpoint
    lookups = count_endpoint_lookups(config)
    urls: list[str] = []
    async with FakeEndpoint(sshd.port) as local:
        connector = relay_to(local, endpoint["DnsName"], urls)
        transport = EICTransport(config, max_tunnel_duration=1800, tunnel_connector=connector)
        async with AsyncSandbox(config, transport=transport) as sb:
            chunks: list[bytes] = []
            result = await sb.execute_code(
                "import hashlib\nopen('out.bin','wb').write(bytes(range(256)) * 20000)\nprint('via tunnel')",
                on_output=lambda s, c: chunks.append(c),
            )
            assert result.stdout == "via tunnel\n" and b"".join(chunks) == b"via tunnel\n"
            data = await sb.get_task_files(result.task_hash, "out.bin")
            assert hashlib.sha256(data).digest() == hashlib.sha256(bytes(range(256)) * 20000).digest()
            # The tunnel's duration ends under a running program: a clear error, then a new tunnel.
            run = await run_in_flight(sb, 10)
            local.end_tunnels()
            with pytest.raises(TransportError, match="was lost while the runner was running"):
                await asyncio.wait_for(run, 60)
            assert (await sb.execute_code("print('new tunnel')")).stdout == "new tunnel\n"
    assert len(lookups) == 1  # the endpoint's DNS name is looked up once, for usable states only
    assert lookups[0]["Filter.1.Name"] == "state"
    assert len(urls) == 2 and transport.keys_pushed == 2
    for query in local.requests:
        assert query["instanceConnectEndpointId"] == endpoint_id
        assert query["remotePort"] == "22"
        assert query["privateIpAddress"] == instance["PrivateIpAddress"]
        assert query["maxTunnelDuration"] == "1800"
        assert query["X-Amz-Credential"].split("/")[2:] == [REGION, "ec2-instance-connect", "aws4_request"]
    assert (tmp_path / "known_hosts").read_text().startswith(instance["InstanceId"] + " ")


async def test_unknown_endpoint_is_a_clear_error(
    sshd: Sshd, instance: dict[str, Any], key_store: EicKeyStore, tmp_base_dir: str, tmp_path: Path
) -> None:
    config = eic_config(sshd, instance, tmp_base_dir, tmp_path, ssh_host=None, ssh_port=22)
    config = config.model_copy(update={"eic_endpoint_id": "eice-00000000000000000"})
    async with AsyncSandbox(config) as sb:
        with pytest.raises(TransportError, match=r"InvalidInstanceConnectEndpointId\.NotFound"):
            await sb.execute_code("print(1)")
    assert key_store.pushes  # the key was pushed; no tunnel was opened


async def test_an_endpoint_still_creating_or_deleted_is_not_dialled(
    sshd: Sshd, instance: dict[str, Any], key_store: EicKeyStore, tmp_base_dir: str, tmp_path: Path
) -> None:
    """A new endpoint is create-in-progress for minutes and a deleted one stays listed as delete-complete:
    neither carries tunnels, and neither may be dialled (the AWS CLI filters on the same states)."""
    ec2 = boto3.client("ec2", region_name=REGION)
    creating = create_endpoint(instance, wait=False)
    endpoint_id = creating["InstanceConnectEndpointId"]
    assert creating["State"] == "create-in-progress"
    dialled: list[str] = []

    async def connector(url: str) -> Any:
        dialled.append(url)
        raise AssertionError("an unusable endpoint was dialled")

    config = eic_config(sshd, instance, tmp_base_dir, tmp_path, ssh_host=None, ssh_port=22)
    config = config.model_copy(update={"eic_endpoint_id": endpoint_id})
    for step in ("creating", "deleted"):
        if step == "deleted":
            ec2.delete_instance_connect_endpoint(InstanceConnectEndpointId=endpoint_id)
        async with AsyncSandbox(config, transport=EICTransport(config, tunnel_connector=connector)) as sb:
            with pytest.raises(TransportError, match=f"Endpoint {endpoint_id} is not available"):
                await sb.execute_code("print(1)")
    assert dialled == []


async def test_fips_configuration_tunnels_through_the_fips_name(
    sshd: Sshd, endpoint: dict[str, Any], via_endpoint: SandboxConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    # The API calls keep moto's in-process host names; only the FIPS setting matters here.
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", f"https://ec2.{REGION}.amazonaws.com")
    monkeypatch.setenv(
        "AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT", f"https://ec2-instance-connect.{REGION}.amazonaws.com"
    )
    aws_session.clear_clients()
    config = via_endpoint
    assert endpoint["FipsDnsName"] != endpoint["DnsName"]
    try:
        async with FakeEndpoint(sshd.port) as local:
            transport = EICTransport(config, tunnel_connector=relay_to(local, endpoint["FipsDnsName"]))
            async with AsyncSandbox(config, transport=transport) as sb:
                assert (await sb.execute_code("print('fips')")).stdout == "fips\n"
    finally:
        aws_session.clear_clients()
    without = {k: v for k, v in endpoint.items() if k != "FipsDnsName"}
    with pytest.raises(TransportError, match="has no FIPS DNS name"):
        endpoint_dns_name(without, fips=True)
    assert endpoint_dns_name(without, fips=False) == endpoint["DnsName"]


async def test_runs_that_would_outlive_the_tunnel_start_on_a_new_one_and_the_old_one_closes(
    sshd: Sshd, endpoint: dict[str, Any], via_endpoint: SandboxConfig
) -> None:
    config = via_endpoint
    async with FakeEndpoint(sshd.port) as local:
        connector = relay_to(local, endpoint["DnsName"])

        # A run allowed 5 s (+ the core's 30 s margin) fits before the tunnel's deadline, one of 20 s not.
        transport = EICTransport(config, max_tunnel_duration=100, tunnel_connector=connector)
        async with AsyncSandbox(config, transport=transport) as sb:
            assert (await sb.execute_code("print(1)", timeout=5)).success
            assert transport.connections_opened == 1
            assert transport._state is not None
            transport._state.deadline = time.monotonic() + 45
            assert (await sb.execute_code("print(2)", timeout=5)).success
            assert transport.connections_opened == 1  # 5 + 30 s still fit before the deadline
            assert (await sb.execute_code("print(3)", timeout=20)).success
            assert transport.connections_opened == 2 and transport.keys_pushed == 2
            for _ in range(100):  # the retired tunnel closes once idle
                if local.active == 1:
                    break
                await asyncio.sleep(0.1)
            assert local.active == 1
