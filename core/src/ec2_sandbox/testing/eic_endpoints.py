"""EC2 Instance Connect Endpoints for moto, which has none: Create, Describe and Delete, as strict as AWS.

Each behaviour follows the EC2 API reference (CreateInstanceConnectEndpoint, DescribeInstanceConnectEndpoints,
DeleteInstanceConnectEndpoint, the Ec2InstanceConnectEndpoint shape) or the EC2 User Guide's EIC Endpoint
pages; where they leave room, the harsher reading:

* ``SubnetId`` is required and must exist; the endpoint lives in that subnet's VPC and zone, with one network
  interface there carrying its security groups - the VPC's default group when none is given ("If you don't
  specify a security group, the default security group for your VPC is used");
* one endpoint per VPC (the EIC Endpoint quotas: "EC2 Instance Connect Endpoints per VPC: 1"); a second is
  refused (the error code is not documented: ``InstanceConnectEndpointLimitExceeded`` here);
* ``PreserveClientIp`` defaults to false: traffic then comes from the endpoint's network interface, which is
  why the instance's security group must admit the endpoint's group;
* a new endpoint is ``create-in-progress`` for :data:`CREATE_SECONDS` before ``create-complete`` (minutes on
  AWS), a deleted one ``delete-in-progress`` and then ``delete-complete`` - and stays listed in that state
  (callers must filter on ``state``, as the AWS CLI's eicefetcher does);
* ``DnsName`` is ``<id>.<hash>.ec2-instance-connect-endpoint.<region>.amazonaws.com``; ``FipsDnsName`` (with
  ``.fips.``) only in US and GovCloud regions, where AWS offers FIPS endpoints;
* Describe filters ``instance-connect-endpoint-id``, ``state``, ``subnet-id``, ``vpc-id``, ``tag:<key>`` and
  ``tag-key``; an unknown id asked for by ``InstanceConnectEndpointIds`` is
  ``InvalidInstanceConnectEndpointId.NotFound``, as is deleting one.

:func:`install` patches moto's EC2 responses; it works in-process (``mock_aws``) and in a moto server.
"""

from __future__ import annotations

import datetime
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.responses import EC2Response

#: Seconds a new endpoint stays create-in-progress (and a deleted one delete-in-progress).
CREATE_SECONDS = 0.5
LIVE_STATES = (
    "create-in-progress",
    "create-complete",
    "update-in-progress",
    "update-complete",
    "update-failed",
)


@dataclass
class Endpoint:
    account: str
    region: str
    endpoint_id: str
    subnet_id: str
    vpc_id: str
    zone: str
    groups: list[str]
    preserve_client_ip: bool
    tags: list[dict[str, str]]
    interface_id: str
    created: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))
    ready_at: float = field(default_factory=lambda: time.monotonic() + CREATE_SECONDS)
    deleted_at: float | None = None

    @property
    def state(self) -> str:
        now = time.monotonic()
        if self.deleted_at is not None:
            return "delete-in-progress" if now < self.deleted_at else "delete-complete"
        return "create-complete" if now >= self.ready_at else "create-in-progress"

    def shape(self) -> dict[str, Any]:
        dns = f"{self.endpoint_id}.{self.endpoint_id[-8:]}"
        shape: dict[str, Any] = {
            "OwnerId": self.account,
            "InstanceConnectEndpointId": self.endpoint_id,
            "InstanceConnectEndpointArn": (
                f"arn:aws:ec2:{self.region}:{self.account}:instance-connect-endpoint/{self.endpoint_id}"
            ),
            "State": self.state,
            "StateMessage": "",
            "DnsName": f"{dns}.ec2-instance-connect-endpoint.{self.region}.amazonaws.com",
            "NetworkInterfaceIds": [self.interface_id],
            "VpcId": self.vpc_id,
            "AvailabilityZone": self.zone,
            "CreatedAt": self.created,
            "SubnetId": self.subnet_id,
            "PreserveClientIp": self.preserve_client_ip,
            "SecurityGroupIds": list(self.groups),
            "Tags": list(self.tags),
        }
        if self.region.startswith(("us-", "us-gov-")):
            shape["FipsDnsName"] = f"{dns}.fips.ec2-instance-connect-endpoint.{self.region}.amazonaws.com"
        return shape

    def matches(self, name: str, values: list[str]) -> bool:
        if name.startswith("tag:"):
            return any(t["Key"] == name[4:] and t["Value"] in values for t in self.tags)
        found = {
            "instance-connect-endpoint-id": [self.endpoint_id],
            "state": [self.state],
            "subnet-id": [self.subnet_id],
            "vpc-id": [self.vpc_id],
            "tag-key": [t["Key"] for t in self.tags],
        }.get(name)
        if found is None:
            raise EC2ClientError("InvalidParameterValue", f"The filter '{name}' is invalid")
        return any(v in values for v in found)


ENDPOINTS: dict[str, Endpoint] = {}
_lock = threading.Lock()
_installed = False


def _not_found(endpoint_id: str) -> EC2ClientError:
    return EC2ClientError(
        "InvalidInstanceConnectEndpointId.NotFound",
        f"The instanceConnectEndpoint ID '{endpoint_id}' does not exist",
    )


def _create(self: EC2Response) -> ActionResult:
    backend = self.ec2_backend
    subnet_id = self._get_param("SubnetId")
    if not subnet_id:
        raise EC2ClientError("MissingParameter", "The request must contain the parameter SubnetId")
    subnet = backend.get_subnet(subnet_id)  # InvalidSubnetID.NotFound, as AWS answers
    with _lock:
        if any(e.vpc_id == subnet.vpc_id and e.state in LIVE_STATES for e in ENDPOINTS.values()):
            raise EC2ClientError(
                "InstanceConnectEndpointLimitExceeded",
                f"VPC {subnet.vpc_id} already has an EC2 Instance Connect Endpoint (1 per VPC)",
            )
    groups = list(self._get_param("SecurityGroupIds", []) or [])
    if not groups:
        groups = [backend.get_default_security_group(subnet.vpc_id).id]
    for group in groups:
        if backend.get_security_group_from_id(group) is None:
            raise EC2ClientError("InvalidGroup.NotFound", f"The security group '{group}' does not exist")
    tags = [
        tag
        for spec in self._get_param("TagSpecifications", []) or []
        if spec.get("ResourceType") == "instance-connect-endpoint"
        for tag in spec.get("Tags", [])
    ]
    endpoint_id = "eice-" + secrets.token_hex(9)[:17]
    interface = backend.create_network_interface(
        subnet, None, group_ids=groups, description=f"EC2 Instance Connect Endpoint {endpoint_id}"
    )
    endpoint = Endpoint(
        account=backend.account_id,
        region=backend.region_name,
        endpoint_id=endpoint_id,
        subnet_id=subnet_id,
        vpc_id=subnet.vpc_id,
        zone=subnet.availability_zone,
        groups=groups,
        preserve_client_ip=bool(self._get_param("PreserveClientIp", False)),
        tags=tags,
        interface_id=interface.id,
    )
    with _lock:
        ENDPOINTS[endpoint_id] = endpoint
    return ActionResult(
        {"InstanceConnectEndpoint": endpoint.shape(), "ClientToken": self._get_param("ClientToken") or ""}
    )


def _describe(self: EC2Response) -> ActionResult:
    backend = self.ec2_backend
    ids = list(self._get_param("InstanceConnectEndpointIds", []) or [])
    filters = [(f["Name"], list(f.get("Values") or [])) for f in self._get_param("Filters", []) or []]
    with _lock:
        here = (backend.account_id, backend.region_name)
        mine = [e for e in ENDPOINTS.values() if (e.account, e.region) == here]
    known = {e.endpoint_id for e in mine}
    for endpoint_id in ids:
        if endpoint_id not in known:
            raise _not_found(endpoint_id)
    found = [
        e.shape()
        for e in mine
        if (not ids or e.endpoint_id in ids) and all(e.matches(name, values) for name, values in filters)
    ]
    return ActionResult({"InstanceConnectEndpoints": found})


def _delete(self: EC2Response) -> ActionResult:
    endpoint_id = self._get_param("InstanceConnectEndpointId")
    with _lock:
        endpoint = ENDPOINTS.get(endpoint_id)
        if endpoint is None or endpoint.account != self.ec2_backend.account_id or endpoint.deleted_at:
            raise _not_found(endpoint_id)
        endpoint.deleted_at = time.monotonic() + CREATE_SECONDS
    # The endpoint's network interface goes with it, so its security groups can be deleted afterwards.
    self.ec2_backend.delete_network_interface(endpoint.interface_id)
    return ActionResult({"InstanceConnectEndpoint": endpoint.shape()})


def reset() -> None:
    """Forget every endpoint (a moto reset does not know about them)."""
    with _lock:
        ENDPOINTS.clear()


def install() -> None:
    """Patch moto's EC2 responses with the three operations (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        # Adding to moto's class is the point: mypy flags each added method.
        EC2Response.create_instance_connect_endpoint = _create  # type: ignore[attr-defined]
        EC2Response.describe_instance_connect_endpoints = _describe  # type: ignore[attr-defined]
        EC2Response.delete_instance_connect_endpoint = _delete  # type: ignore[attr-defined]
        _installed = True
    from moto.core import responses

    cached = getattr(responses, "method_names_from_class", None)
    if cached is not None and hasattr(cached, "cache_clear"):
        cached.cache_clear()
