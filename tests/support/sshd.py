"""A private OpenSSH sshd for tests, and a faithful stand-in for EC2 Instance Connect's key push.

``Sshd`` runs ``/usr/sbin/sshd -D -e -f <dir>/sshd_config`` on 127.0.0.1 and a free high port with its own
host key, leaving any system sshd alone. Logins are accepted for keys in ``<dir>/authorized_keys/<user>``
(plain ``ssh``) and for keys that ``AuthorizedKeysCommand`` finds in an ``EicKeyStore`` - as on an instance,
where ``eic_run_authorized_keys`` serves the keys that ``SendSSHPublicKey`` pushed, each for 60 seconds
(configurable here so tests need not wait a minute).

``EicKeyStore.patch_moto`` makes moto's ``send_ssh_public_key`` (a stub that stores nothing) check the
instance in moto's EC2 backend and write the pushed key into the store with its expiry.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import asyncssh
import pytest

if TYPE_CHECKING:
    from ec2_sandbox import SandboxConfig

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def sshd_available() -> str | None:
    """None when a private sshd can run here, else the reason it cannot."""
    if not os.path.exists(SSHD):
        return "OpenSSH server not installed (Debian package openssh-server provides /usr/sbin/sshd)"
    if os.geteuid() != 0:
        return "the private sshd fixture needs root (it logs in as root and runs sshd's privilege separation)"
    return None


requires_sshd = pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def public_line(key: asyncssh.SSHKey) -> str:
    return key.export_public_key("openssh").decode("ascii").strip()


class EicKeyStore:
    """Keys pushed through (moto's) EC2 Instance Connect, each valid for ``ttl`` seconds, per OS user."""

    def __init__(self, root: Path, ttl: float = 60.0) -> None:
        self.root = root
        self.ttl = ttl
        self.pushes: list[dict[str, str]] = []
        root.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(root, 0o755)  # sshd runs the AuthorizedKeysCommand as nobody

    def add(self, user: str, public_key: str) -> None:
        expires_ms = int((time.time() + self.ttl) * 1000)
        user_dir = self.root / user
        user_dir.mkdir(mode=0o755, exist_ok=True)
        path = user_dir / f"{expires_ms}-{uuid.uuid4().hex}.pub"
        path.write_text(public_key.strip() + "\n")
        os.chmod(path, 0o644)

    def expire_all(self) -> None:
        for path in self.root.glob("*/*.pub"):
            path.unlink()

    def command_script(self) -> str:
        """The AuthorizedKeysCommand body: print the user's keys whose expiry is still ahead."""
        return f"""#!/bin/sh
now=$(( $(date +%s%N) / 1000000 ))
dir='{self.root}'/"$1"
[ -d "$dir" ] || exit 0
for f in "$dir"/*.pub; do
  [ -e "$f" ] || continue
  name=${{f##*/}}
  expires=${{name%%-*}}
  if [ "$expires" -gt "$now" ]; then cat "$f"; fi
done
exit 0
"""

    def patch_moto(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Route moto's SendSSHPublicKey into this store (moto's own implementation stores nothing)."""
        from moto.core.exceptions import JsonRESTError
        from moto.ec2.models import ec2_backends
        from moto.ec2instanceconnect.responses import Ec2InstanceConnectResponse

        store = self

        def send_ssh_public_key(response: Ec2InstanceConnectResponse) -> str:
            params = json.loads(response.body)
            instance_id = params["InstanceId"]
            backend = ec2_backends[response.current_account][response.region]
            try:
                instance = backend.get_instance(instance_id)
            except Exception:
                raise JsonRESTError(
                    "EC2InstanceNotFoundException", f"Instance {instance_id} not found"
                ) from None
            zone = params.get("AvailabilityZone")
            if zone and zone != instance.availability_zone:
                raise JsonRESTError(
                    "InvalidArgsException", f"Instance {instance_id} is not in availability zone {zone}"
                )
            if instance.state != "running":
                raise JsonRESTError("EC2InstanceStateInvalidException", f"Instance {instance_id} not running")
            key = params["SSHPublicKey"]
            if not key.startswith(("ssh-ed25519 ", "ssh-rsa ", "ecdsa-sha2-")):
                raise JsonRESTError("InvalidArgsException", "unsupported key type")
            store.pushes.append(params)
            store.add(params["InstanceOSUser"], key)
            return json.dumps({"RequestId": str(uuid.uuid4()), "Success": True})

        monkeypatch.setattr(Ec2InstanceConnectResponse, "send_ssh_public_key", send_ssh_public_key)


class Sshd:
    """One private sshd. ``kill()`` ends it and every connection it serves; ``start()`` brings it back."""

    def __init__(self, workdir: Path, eic_keys: EicKeyStore | None = None) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.eic_keys = eic_keys or EicKeyStore(self.dir / "eic-keys")
        self.proc: subprocess.Popen[bytes] | None = None
        self.host_key_path = self.dir / "host_ed25519"
        self.client_key = asyncssh.generate_private_key("ssh-ed25519", comment="ec2-sandbox-test")
        self.client_key_path = self.dir / "client_ed25519"
        self.client_key.write_private_key(str(self.client_key_path))
        os.chmod(self.client_key_path, 0o600)
        (self.dir / "authorized_keys").mkdir(exist_ok=True)
        (self.dir / "authorized_keys" / "root").write_text(public_line(self.client_key) + "\n")
        self.new_host_key()
        script = self.dir / "eic_keys.sh"
        script.write_text(self.eic_keys.command_script())
        os.chmod(script, 0o755)
        self.log_path = self.dir / "sshd.log"
        (self.dir / "sshd_config").write_text(
            f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key_path}
PidFile {self.dir}/sshd.pid
UsePAM no
StrictModes no
PermitRootLogin yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile {self.dir}/authorized_keys/%u
AuthorizedKeysCommand /bin/sh {script} %u
AuthorizedKeysCommandUser nobody
Subsystem sftp internal-sftp
PrintMotd no
UseDNS no
LogLevel VERBOSE
"""
        )

    def new_host_key(self) -> asyncssh.SSHKey:
        """Give the server a new host key (takes effect at the next start)."""
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.host_key.write_private_key(str(self.host_key_path))
        os.chmod(self.host_key_path, 0o600)
        return self.host_key

    def start(self) -> None:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.dir / "sshd_config")],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.02)
        raise RuntimeError(f"sshd did not listen on 127.0.0.1:{self.port}: {self.log()}")

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def descendants(self) -> list[int]:
        """Processes started by the listener: the per-connection sshd processes and their sessions."""
        if self.proc is None:
            return []
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            for child in children.get(pid, []):
                found.append(child)
                todo.append(child)
        return found

    def kill(self) -> None:
        """SIGKILL the listener and every process under it: open connections drop at once."""
        if self.proc is None:
            return
        pids = self.descendants()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        self.kill()


@contextlib.contextmanager
def running_sshd(ttl: float = 60.0) -> Iterator[Sshd]:
    """A started sshd in a fresh temporary dir, stopped and removed afterwards."""
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    workdir = Path(tempfile.mkdtemp(prefix="ec2sb-sshd-", dir="/tmp"))
    try:
        server = Sshd(workdir, EicKeyStore(workdir / "eic-keys", ttl))
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def ssh_config(server: Sshd, base_dir: str, known_hosts: str | Path, **changes: object) -> SandboxConfig:
    """The ssh transport to a private sshd of these tests, as root, over ``base_dir``."""
    from ec2_sandbox import SandboxConfig

    fields: dict[str, object] = {
        "transport": "ssh",
        "ssh_host": "127.0.0.1",
        "ssh_port": server.port,
        "ssh_user": "root",
        "ssh_key_file": str(server.client_key_path),
        "ssh_known_hosts": str(known_hosts),
        "base_sandbox_dir": base_dir,
    }
    fields.update(changes)
    return SandboxConfig(**fields)
