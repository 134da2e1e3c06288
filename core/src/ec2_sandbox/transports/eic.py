"""The ``eic`` transport: SSH to an EC2 instance with keys pushed by EC2 Instance Connect.

Every connection gets a fresh ed25519 key that exists only in this process's memory. Its public half is
pushed with ``ec2-instance-connect:SendSSHPublicKey`` for the configured OS user; the instance accepts it for
60 seconds, and a connection opened in that window stays open after the key expires. So: one push per
connection, and a reconnect (after a drop) pushes a new key by itself.

The instance is reached at its public or private address (``eic_address``), at ``ssh_host`` when that is
set (a DNS name, a forwarded port), or - when ``eic_endpoint_id`` is set - through an EC2 Instance Connect
Endpoint: a SigV4-presigned ``wss://<endpoint>/openTunnel`` websocket carries the TCP stream to port 22 in
binary frames, bridged to asyncssh through a socket pair. A tunnel lives at most ``maxTunnelDuration``
seconds: runs that would outlast it start on a fresh tunnel, and the old one closes once its runs end.

Host keys are recorded under the instance id, not its address (addresses change across stop/start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import asyncssh
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import BotoCoreError, ClientError

from .. import aws_session
from ..errors import ConfigError, TransportError
from ..schema import StatusPart
from .ssh import SSHTransport, host_key_policy

log = logging.getLogger(__name__)

#: What AWS allows at most, and the default of the AWS CLI's open-tunnel.
MAX_TUNNEL_DURATION = 3600
#: Seconds of a presigned openTunnel URL's validity (the AWS CLI uses 60 too).
PRESIGN_EXPIRES = 60
#: Largest binary frame sent into the tunnel (as the AWS CLI does).
FRAME_BYTES = 65000
#: Endpoint states that carry tunnels: the AWS CLI's eicefetcher.py asks for exactly these (a deleted endpoint
#: stays listed as delete-complete, a new one is create-in-progress for minutes).
USABLE_ENDPOINT_STATES = ["create-complete", "update-in-progress", "update-failed", "update-complete"]

TunnelConnector = Callable[[str], Awaitable[Any]]


def presigned_tunnel_url(
    credentials: Any,
    region: str,
    dns_name: str,
    endpoint_id: str,
    private_ip: str,
    remote_port: int = 22,
    max_tunnel_duration: int | None = MAX_TUNNEL_DURATION,
    expires: int = PRESIGN_EXPIRES,
) -> str:
    """The SigV4 query-signed ``wss://`` URL of an EIC Endpoint tunnel to ``private_ip:remote_port``."""
    query: dict[str, Any] = {
        "instanceConnectEndpointId": endpoint_id,
        "remotePort": remote_port,
        "privateIpAddress": private_ip,
    }
    if max_tunnel_duration:
        query["maxTunnelDuration"] = max_tunnel_duration
    request = AWSRequest(
        method="GET", url=f"wss://{dns_name}/openTunnel?{urlencode(query)}", headers={"host": dns_name}
    )
    SigV4QueryAuth(credentials, "ec2-instance-connect", region, expires=expires).add_auth(request)
    assert request.url is not None  # given above; signing adds the query's signature to it
    return request.url


def endpoint_dns_name(endpoint: dict[str, Any], fips: bool) -> str:
    """The name to open tunnels at: ``FipsDnsName`` when FIPS endpoints are configured (``use_fips_endpoint``,
    ``AWS_USE_FIPS_ENDPOINT``), as the AWS CLI does, else ``DnsName``."""
    endpoint_id = endpoint.get("InstanceConnectEndpointId")
    if not fips:
        return str(endpoint["DnsName"])
    if not endpoint.get("FipsDnsName"):
        raise TransportError(
            f"FIPS endpoints are configured (use_fips_endpoint) but the EC2 Instance Connect Endpoint "
            f"{endpoint_id} has no FIPS DNS name in this region"
        )
    return str(endpoint["FipsDnsName"])


async def websocket_connect(url: str) -> Any:
    """Open the tunnel's websocket (binary frames only; SSH keepalives watch the link, not pings)."""
    from websockets.asyncio.client import connect

    return await connect(url, max_size=None, compression=None, ping_interval=None, open_timeout=20)


async def bridge_websocket(ws: Any) -> tuple[socket.socket, Callable[[], Awaitable[None]]]:
    """A socket whose other end is pumped to and from ``ws``; returns it and a coroutine that tears down."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=theirs)

    async def upstream() -> None:
        try:
            while data := await reader.read(FRAME_BYTES):
                await ws.send(data)
        finally:
            with contextlib.suppress(Exception):
                await ws.close()

    async def downstream() -> None:
        try:
            async for message in ws:
                if isinstance(message, str):
                    log.warning("the EIC tunnel sent a text frame; closing it")
                    break
                writer.write(message)
                await writer.drain()
        except Exception as exc:
            log.debug("EIC tunnel closed: %s", exc)
        finally:
            writer.close()

    tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]

    async def close() -> None:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await ws.close()
        writer.close()
        await asyncio.gather(*tasks, return_exceptions=True)

    return ours, close


class EICTransport(SSHTransport):
    """SSH with ephemeral keys pushed through EC2 Instance Connect, optionally over an EIC Endpoint."""

    name = "eic"

    def __init__(
        self,
        config: Any,
        *,
        max_tunnel_duration: int = MAX_TUNNEL_DURATION,
        tunnel_connector: TunnelConnector = websocket_connect,
    ) -> None:
        if not config.instance_id:
            raise ConfigError("transport 'eic' needs instance_id")
        super().__init__(
            config.ssh_host or config.instance_id,
            port=config.ssh_port,
            user=config.ssh_user,
            use_agent=False,
            host_keys=host_key_policy(config),
            host_key_alias=config.instance_id,
            sudo=bool(getattr(config, "ssh_sudo", False)),
        )
        self.config = config
        self.instance_id: str = config.instance_id
        self.max_tunnel_duration = max_tunnel_duration
        self.tunnel_connector = tunnel_connector
        self._key: asyncssh.SSHKey | None = None
        self._endpoint_dns: str | None = None
        self.keys_pushed = 0
        self.last_tunnel_url: str | None = None

    @property
    def target(self) -> str:
        return self.instance_id

    # ------------------------------------------------------------------ AWS calls
    def _client(self, service: aws_session.Service) -> Any:
        return aws_session.client(self.config, service)

    async def describe_instance(self) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            reply = self._client("ec2").describe_instances(InstanceIds=[self.instance_id])
            for reservation in reply.get("Reservations", []):
                for instance in reservation.get("Instances", []):
                    return instance
            raise TransportError(f"instance {self.instance_id} was not found")

        return await self._aws(call, "describe the instance")

    async def _aws(self, call: Callable[[], Any], what: str) -> Any:
        try:
            return await asyncio.to_thread(call)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise TransportError(
                f"cannot {what} ({self.instance_id}): {error.get('Code')}: {error.get('Message')}"
            ) from None
        except BotoCoreError as exc:
            raise TransportError(f"cannot {what} ({self.instance_id}): {exc}") from None

    def address_of(self, instance: dict[str, Any]) -> str:
        """The address to connect to: ``ssh_host`` if set, else the configured public or private IP."""
        if self.config.ssh_host:
            return self.config.ssh_host
        kind = getattr(self.config, "eic_address", "public")
        address = instance.get("PublicIpAddress" if kind == "public" else "PrivateIpAddress")
        if not address:
            hint = (
                "set eic_address to 'private' (from inside the VPC) or eic_endpoint_id (through an EIC "
                "Endpoint)"
                if kind == "public"
                else "is the instance running?"
            )
            raise TransportError(f"instance {self.instance_id} has no {kind} IP address: {hint}")
        return address

    async def push_key(self, instance: dict[str, Any]) -> asyncssh.SSHKey:
        """A new in-memory ed25519 key whose public half is pushed for ``ssh_user`` (60 s for new logins)."""
        key = asyncssh.generate_private_key("ssh-ed25519", comment="ec2-sandbox")
        public = key.export_public_key("openssh").decode("ascii").strip()
        kwargs = {
            "InstanceId": self.instance_id,
            "InstanceOSUser": self.user,
            "SSHPublicKey": public,
        }
        zone = (instance.get("Placement") or {}).get("AvailabilityZone")
        if zone:
            kwargs["AvailabilityZone"] = zone

        def call() -> Any:
            reply = self._client("ec2-instance-connect").send_ssh_public_key(**kwargs)
            if not reply.get("Success", False):
                raise TransportError(f"EC2 Instance Connect did not accept the key for {self.instance_id}")
            return reply

        await self._aws(call, f"push an SSH key for user {self.user!r} with EC2 Instance Connect")
        self.keys_pushed += 1
        return key

    async def endpoint_dns(self) -> str:
        if self._endpoint_dns is None:
            endpoint_id = self.config.eic_endpoint_id

            def call() -> str:
                ec2 = self._client("ec2")
                reply = ec2.describe_instance_connect_endpoints(
                    InstanceConnectEndpointIds=[endpoint_id],
                    Filters=[{"Name": "state", "Values": USABLE_ENDPOINT_STATES}],
                )
                endpoints = reply.get("InstanceConnectEndpoints") or []
                if not endpoints:
                    raise TransportError(
                        f"EC2 Instance Connect Endpoint {endpoint_id} is not available: it is not in state "
                        "create-complete (or update-*) - still being created, failed, or deleted"
                    )
                return endpoint_dns_name(endpoints[0], bool(ec2.meta.config.use_fips_endpoint))

            self._endpoint_dns = await self._aws(call, f"describe the EIC Endpoint {endpoint_id}")
        return self._endpoint_dns

    async def tunnel_url(self, private_ip: str) -> str:
        dns = await self.endpoint_dns()
        session = aws_session.make_session(self.config)
        credentials = session.get_credentials()
        region = self.config.region or session.region_name
        if credentials is None or not region:
            raise TransportError("no AWS credentials or region to sign the EIC Endpoint tunnel with")
        return presigned_tunnel_url(
            credentials.get_frozen_credentials(),
            region,
            dns,
            self.config.eic_endpoint_id,
            private_ip,
            remote_port=self.port,
            max_tunnel_duration=self.max_tunnel_duration,
        )

    # ------------------------------------------------------------------ connecting
    async def _prepare(self) -> tuple[str, int, dict[str, Any]]:
        instance = await self.describe_instance()
        state = (instance.get("State") or {}).get("Name")
        if state != "running":
            raise TransportError(f"instance {self.instance_id} is {state}, not running")
        self._key = await self.push_key(instance)
        if not self.config.eic_endpoint_id:
            return self.address_of(instance), self.port, {}
        private_ip = instance.get("PrivateIpAddress")
        if not private_ip:
            raise TransportError(f"instance {self.instance_id} has no private IP for the EIC Endpoint")
        url = await self.tunnel_url(private_ip)
        self.last_tunnel_url = url
        try:
            ws = await self.tunnel_connector(url)
        except Exception as exc:
            raise TransportError(
                f"cannot open the EIC Endpoint tunnel {self.config.eic_endpoint_id} to {self.instance_id}: "
                f"{exc}"
            ) from None
        sock, close = await bridge_websocket(ws)
        return private_ip, self.port, {"sock": sock, "_closers": [close]}

    def _deadline(self) -> float | None:
        if not self.config.eic_endpoint_id:
            return None
        # A little margin: the tunnel's clock started before the SSH handshake finished.
        return time.monotonic() + self.max_tunnel_duration - 10

    async def _client_keys_for_connection(self) -> list[asyncssh.SSHKey] | None:
        key, self._key = self._key, None
        if key is None:
            raise TransportError("internal: no pushed key for this connection")
        return [key]

    def _auth_hint(self) -> str:
        return (
            "The pushed key was refused: is ec2-instance-connect installed on the instance (Amazon Linux and "
            "Ubuntu images have it), is ssh_user the instance's login user, and did the connection start "
            "within the key's 60 seconds?"
        )

    # ------------------------------------------------------------------ health
    async def status_parts(self) -> list[StatusPart]:
        parts: list[StatusPart] = []
        try:
            instance = await self.describe_instance()
        except TransportError as exc:
            return [StatusPart(name="instance", ok=False, message=str(exc))]
        state = (instance.get("State") or {}).get("Name")
        parts.append(
            StatusPart(
                name="instance",
                ok=state == "running",
                message=f"instance {self.instance_id} is {state}",
                details={
                    "state": state,
                    "instance_type": instance.get("InstanceType"),
                    "availability_zone": (instance.get("Placement") or {}).get("AvailabilityZone"),
                    "public_ip": instance.get("PublicIpAddress"),
                    "private_ip": instance.get("PrivateIpAddress"),
                    "endpoint": self.config.eic_endpoint_id,
                },
            )
        )
        if state == "running":
            parts += await super().status_parts()
        return parts


def create_eic_transport(config: Any) -> EICTransport:
    """Factory for ``transport: "eic"``."""
    return EICTransport(config)
