"""The SSM transport: the runner on an EC2 instance, through Systems Manager Run Command.

One run is one ``AWS-RunShellScript`` command when it fits (about 64 KB of parameters): a fixed ``sh``
script that hands a here-doc of base64 data to ``python3``. The data is the request (and, the first time, the
runner's source, which then stays cached on the instance), compressed; nothing a caller supplied ever becomes
shell text. Larger requests are staged first - in chunks over several commands into a root-only staging dir
on the instance, or through S3 when ``s3_bucket`` is set - and the run's command reads them from there.

SSM returns at most 24,000 characters of a command's stdout, so :attr:`SsmTransport.max_output_chars` makes
the runner fit its envelope under that cap (less a margin for the newline); the core reads everything else
back from the task dir in pages, several commands at once. The instance fits each page under the cap
itself: as base64, or zlib-compressed when that carries more of the file (never when it carries less).
With ``s3_bucket`` set, the agent uploads each command's complete output there instead: no cap, and pages
of megabytes.

Status is polled by this module, not by boto3's waiter (which sleeps 5 s and treats a failing program as an
error): a few polls 30 ms apart from the time recent commands took, then gaps that grow with the command's
age (up to 5 s), so that a run costs few calls whatever its length. botocore's standard retry mode absorbs
throttling; ``InvocationDoesNotExist`` right after sending is retried here. A caller giving up (cancellation,
deadline) cancels the command.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextvars
import hashlib
import json
import logging
import math
import secrets
import shlex
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .. import aws_session
from ..config import SandboxConfig
from ..errors import ConfigError, TransportError
from ..protocol import RunnerRefusal, call, runner_sha256, runner_source
from ..protocol import page_data as protocol_page_data
from ..protocol import result as protocol_result
from ..schema import StatusPart
from .base import LineCallback, RunnerOutput, Transport
from .ssm_upload import POLL_GROWTH, POLL_MAX, POLL_MIN, ForgedManifest, Upload

log = logging.getLogger(__name__)

#: Attempts per API call in botocore's standard retry mode (exponential backoff with jitter on throttling
#: and transient errors); the poll loop keeps asking on its own, at ``poll_max`` intervals, after that.
RETRY_ATTEMPTS = 5
#: Characters of parameters one command may carry; SSM refuses around 64 KB (MaxDocumentSizeExceeded).
MAX_COMMAND_CHARS = 60_000
#: Raw bytes of staged data per chunk command (base64 makes 4/3 of it).
CHUNK_BYTES = 43_500
#: Chunk commands in flight at once. The agent runs five at a time (Mds.CommandWorkersLimit); the others
#: spend the delivery latency on the way, which is when more in flight pays.
CHUNK_CONCURRENCY = 10
#: Read pages in flight at once, and the most one page asks for: the instance sends as much of it as fits
#: the 24,000-character cap, compressed when that carries more (the reader then asks for about that much).
PAGE_WINDOW, PAGE_ASK = 10, 1 << 20
#: With an output bucket (no cap): pages in flight, and their size.
S3_PAGE_WINDOW, S3_PAGE_BYTES = 4, 8 << 20
#: SSM's stdout cap is 24,000 characters; the envelope line and its newline stay under it.
SSM_STDOUT_CAP, SSM_STDERR_CAP = 24_000, 8_000
#: A spooled read (no output bucket): one runner command cuts a range of at most SPOOL_BYTES into pages
#: that fill stdout's and stderr's caps (to SPOOL_OUT and SPOOL_ERR characters), kept in the root-only
#: staging dir; then each page costs one ``cat`` command, SPOOL_WINDOW of them in flight.
SPOOL_BYTES, SPOOL_WINDOW = 16 << 20, 16
SPOOL_OUT, SPOOL_ERR = SSM_STDOUT_CAP - 200, SSM_STDERR_CAP - 200
#: A read spools what is left after its first page when that is more than about four pages.
SPOOL_AFTER = 64 << 10
#: With an output bucket, the most one command uploads of a long read (the instance holds it in memory).
UPLOAD_BYTES = 64 << 20
#: A spooled page's command exits so when the spool is gone; other failures are asked again, so often.
SPOOL_GONE, SPOOL_PAGE_ATTEMPTS = 97, 3
#: Key prefix of everything this transport puts in ``s3_bucket`` (staged requests, command output).
S3_PREFIX = "ec2-sandbox"
#: SendCommand's TimeoutSeconds (AWS's minimum). The agent has TimeoutSeconds *plus* executionTimeout to take
#: a command ("Total timeout", AWS's "Understanding command timeout values"), so the delivery window always
#: outlasts the run's own deadline: whether a command was picked up is learnt from the agent, not from it.
DELIVERY_TIMEOUT = 30
#: Seconds a command may go without starting before the instance and its agent are checked, and between
#: later checks. With the agent offline AWS keeps a command InProgress (not Pending) until the window ends.
PENDING_CHECK_AFTER, RECHECK_EVERY = 5.0, 30.0
#: Seconds a presigned staging URL is asked to live: the instance fetches it as soon as the command starts.
PRESIGN_SECONDS = 900
#: Credentials that expire sooner than this cannot sign a staging URL worth sending.
MIN_PRESIGN_SECONDS = 60
#: Polls around the time commands usually finish, and the seconds between them.
DENSE_POLLS, DENSE_STEP = 3, 0.03
#: After those, the gap between polls is at least this fraction of the time the command has run.
GROWTH = 0.5
TRUNCATION_MARKERS = ("---Output truncated---", "--output truncated--", "----- Result truncated ----")
THROTTLING = {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
RUNNING = {"Pending", "InProgress", "Delayed", "Cancelling"}
HEREDOC_END = "EC2_SANDBOX_DATA"
#: What the instance answers when the runner is not cached there (the transport then sends it again).
RUNNER_MISSING, RUNNER_MISSING_EXIT = "EC2_SANDBOX_RUNNER_MISSING", 93

# The program python3 runs on the instance. It reads base64 lines from stdin: a JSON header, then the data.
# Modes: "part" stores one chunk of staged data; "run" unpacks the runner and the request (inline, from
# staged chunks, or from a presigned S3 URL), checks the SHA-256 and runs the runner in this interpreter.
# The runner is cached on the instance (root-only staging dir, checked by SHA-256), so later commands carry
# only the request. A "read" request may ask, besides, for its range to be spooled in pages (``spool``) or
# PUT in parts to presigned URLs (``upload``; then a manifest signed with the header's ``mac`` key, best
# effort: the command's output says the same): see :meth:`SsmTransport.bulk_read` and :mod:`.ssm_upload`.
# Every run sweeps spools older than 15 minutes (a client that died mid-read).
# It travels zlib-compressed and base64-encoded (BOOTSTRAP_LINE): in the SSM console the command shows that
# blob; ``python3 -c 'import base64,zlib;print(zlib.decompress(base64.b64decode("...")).decode())'`` shows
# the program. Tracebacks from it name the file ``<string>``.
BOOTSTRAP = r"""
import base64, hashlib, io, json, os, stat, sys, zlib
def staging(base):
    if not base:
        if os.geteuid() == 0:
            base = "/var/lib/ec2-sandbox"
        else:
            home = os.path.expanduser("~")
            state = os.environ.get("XDG_STATE_HOME") or os.path.join(home, ".local", "state")
            base = os.path.join(state, "ec2-sandbox")
    path = os.path.join(base, "staging")
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise SystemExit("staging dir %s is not a directory owned by this user" % path)
    os.chmod(path, 0o700)
    return path
def put(path, data):
    tmp = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.rename(tmp, path)
def get(path):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()
def pack(raw, pos, room):
    plain = min(len(raw) - pos, max(0, room) // 4 * 3 // 512 * 512)
    packer, packed, best, taken, sent, step = zlib.compressobj(6), [], 0, b"", pos, 8192
    for i in range(pos + plain, len(raw) + step, step) if len(raw) - pos > plain else ():
        j = min(i, len(raw))
        packed.append(packer.compress(raw[sent:j]))
        sent = j
        tail = packer.copy().flush()
        if (sum(len(p) for p in packed) + len(tail) + 2) // 3 * 4 > room:
            break
        best, taken = j - pos, b"".join(packed) + tail
        if j >= len(raw):
            break
    if best > plain:
        return best, taken
    return plain, None
def read_raw(req, module, fit):
    req["raw"] = True
    env = module.handle(req)
    res = env.get("result") if env.get("ok") else None
    if not isinstance(res, dict) or not isinstance(res.get("raw"), bytes):
        print(module.fit_envelope(env, fit) if fit else json.dumps({"envelope": env}))
        sys.exit(0)
    return env, res, res.pop("raw")
def sweep(where):
    import shutil, time
    for name in os.listdir(where):
        old = os.path.join(where, name)
        try:
            if name.startswith("spool-") and time.time() - os.lstat(old).st_mtime > 900:
                shutil.rmtree(old)
        except OSError:
            pass
def spool(req, module, where, fit):
    import shutil
    ask = req.pop("spool")
    token, out, err = str(ask.get("token")), int(ask["out"]), int(ask["err"])
    if len(token) != 32 or token.strip("0123456789abcdef"):
        raise SystemExit("a spool token is 32 hex digits")
    env, res, raw = read_raw(req, module, fit)
    home = os.path.join(where, "spool-" + token)
    pages, pos = [], 0
    try:
        if raw:
            os.mkdir(home, 0o700)
        while pos < len(raw):
            n, packed = pack(raw, pos, out + err - 17)
            if n < 1:
                raise SystemExit("a spooled page must carry a byte")
            text = ("z%s" % base64.b64encode(packed).decode()) if packed else None
            text = text or "b" + base64.b64encode(raw[pos : pos + n]).decode()
            text = text[0] + hashlib.sha256(raw[pos : pos + n]).hexdigest()[:16] + text[1:]
            put(os.path.join(home, "%d" % len(pages)), text[:out].encode())
            put(os.path.join(home, "%de" % len(pages)), text[out:].encode())
            pages.append(n)
            pos += n
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise
    res["spool"] = {"dir": home, "pages": pages, "sha256": hashlib.sha256(raw).hexdigest()}
    print(json.dumps({"envelope": env}, separators=(",", ":")))
    sys.exit(0)
def put_url(url, data):
    import urllib.request
    sending = urllib.request.Request(url, data=data, method="PUT")
    sending.add_header("Content-Type", "application/octet-stream")
    sending.add_header("Content-Length", str(len(data)))
    with urllib.request.urlopen(sending, timeout=600) as reply:
        reply.read()
def upload(req, module, key):
    import hmac, threading
    ask = req.pop("upload")
    urls = [str(u) for u in ask["parts"]]
    env, res, raw = read_raw(req, module, None)
    if len(raw) <= 16384:
        res["b64"] = base64.b64encode(raw).decode("ascii")
    else:
        n = max(1, min(len(urls), len(raw) // max(1, int(ask["part"]))))
        step, view, parts, failed = -(-len(raw) // n), memoryview(raw), [None] * n, []
        def send(i):
            try:
                chunk = view[i * step : (i + 1) * step]
                parts[i] = [len(chunk), hashlib.sha256(chunk).hexdigest()]
                put_url(urls[i], chunk)
            except BaseException as exc:
                failed.append(exc)
        senders = [threading.Thread(target=send, args=(i,)) for i in range(n)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        if failed:
            raise failed[0]
        res["uploaded"] = {"bytes": len(raw), "parts": parts}
    body = json.dumps({"envelope": env}, separators=(",", ":"))
    if "uploaded" in res and key:
        try:
            sign = hmac.new(bytes.fromhex(key), body.encode(), "sha256").hexdigest()
            put_url(str(ask["done"]), (body + "\n" + sign).encode())
        except Exception:
            pass
    print(body)
    sys.exit(0)
lines = sys.stdin.read().split()
head = json.loads(base64.b64decode(lines[0]))
data = base64.b64decode("".join(lines[1:]))
where = staging(head.get("base"))
if head["mode"] == "part":
    put(os.path.join(where, "%s.%06d" % (head["id"], head["index"])), data)
    print("staged %d" % len(data))
    sys.exit(0)
if head.get("parts"):
    names = [os.path.join(where, "%s.%06d" % (head["id"], i)) for i in range(head["parts"])]
    try:
        data = b"".join(get(name) for name in names)
    finally:
        for name in names:
            try:
                os.unlink(name)
            except OSError:
                pass
elif head.get("url"):
    import urllib.request
    with urllib.request.urlopen(head["url"], timeout=600) as reply:
        data = reply.read()
if hashlib.sha256(data).hexdigest() != head["sha256"]:
    raise SystemExit("staged data is corrupt: SHA-256 mismatch")
data = zlib.decompress(data)
cut = data.index(b"\n")
sizes = [int(n) for n in data[:cut].split()]
source = data[cut + 1 : cut + 1 + sizes[0]]
request = data[cut + 1 + sizes[0] : cut + 1 + sizes[0] + sizes[1]]
path = os.path.join(where, "runner-%s.py" % head["runner"][:32])
if source:
    if hashlib.sha256(source).hexdigest() != head["runner"]:
        raise SystemExit("the runner arrived corrupt: SHA-256 mismatch")
    put(path, source)
else:
    try:
        cached = get(path)
    except OSError:
        cached = b""
    if hashlib.sha256(cached).hexdigest() != head["runner"]:
        print("EC2_SANDBOX_RUNNER_MISSING")
        sys.exit(93)
import importlib.util
spec = importlib.util.spec_from_file_location("ec2_sandbox_runner", path)
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
sweep(where)
fit = head.get("fit")
req = None
if fit or b"\"op\":\"read\"" in request:
    try:
        req = json.loads(request.decode("utf-8"))
    except ValueError:
        pass
if isinstance(req, dict) and req.get("op") == "read" and isinstance(req.get("spool"), dict):
    spool(req, module, where, fit)
if isinstance(req, dict) and req.get("op") == "read" and isinstance(req.get("upload"), dict):
    upload(req, module, head.get("mac"))
if fit:
    if isinstance(req, dict) and req.get("op") == "read":
        env, res, raw = read_raw(req, module, fit)
        res["b64"] = ""
        room = fit - len(json.dumps({"envelope": env}, separators=(",", ":"))) - 40
        n, packed = pack(raw, 0, room)
        if packed:
            del res["b64"]
            res["z"], res["zlen"] = base64.b64encode(packed).decode("ascii"), n
        else:
            res["b64"] = base64.b64encode(raw[:n]).decode("ascii")
        print(json.dumps({"envelope": env}, separators=(",", ":")))
        sys.exit(0)
sys.stdin = io.TextIOWrapper(io.BytesIO(request), encoding="utf-8")
code = module.main([])
sys.exit(3 if code in (137, 194) else code)
"""


#: The key an uploading read's manifest is signed with, for the command that read sends (see
#: :meth:`SsmTransport._read_uploaded`).
_MANIFEST_KEY: contextvars.ContextVar[str | None] = contextvars.ContextVar("manifest_key", default=None)

#: The bootstrap as it travels in every command: compressed, which leaves more of a command for data.
_PACKED_BOOTSTRAP = base64.b64encode(zlib.compress(BOOTSTRAP.strip().encode("utf-8"), 9)).decode("ascii")
BOOTSTRAP_LINE = f'import base64,zlib;exec(zlib.decompress(base64.b64decode("{_PACKED_BOOTSTRAP}")))'


def _script(header: dict[str, Any], data: bytes = b"") -> list[str]:
    """The command lines: sh hands base64 data to python3; exit statuses SSM reserves are mapped away."""
    head = base64.b64encode(json.dumps(header, separators=(",", ":")).encode()).decode()
    body = base64.b64encode(data).decode()
    lines = [body[i : i + 16384] for i in range(0, len(body), 16384)]
    return [
        "set -u",
        "export LANG=C.UTF-8",
        "python3 -I -S -c '" + BOOTSTRAP_LINE + "' <<'" + HEREDOC_END + "'",
        head,
        *lines,
        HEREDOC_END,
        "rc=$?",
        "case $rc in 137|194) rc=3 ;; esac",
        "exit $rc",
    ]


def output_key(command_id: str, instance_id: str, stream: str) -> str:
    """Where the agent uploads a command's complete ``stdout`` or ``stderr`` under :data:`S3_PREFIX`."""
    return f"{S3_PREFIX}/{command_id}/{instance_id}/awsrunShellScript/0.awsrunShellScript/{stream}"


def _truncated(data: bytes) -> bool:
    tail = data[-64:].decode("utf-8", "replace")
    return any(marker in tail for marker in TRUNCATION_MARKERS)


def _size(commands: Sequence[str]) -> int:
    return len(json.dumps({"commands": list(commands), "executionTimeout": ["172800"]}))


def _details(inv: dict[str, Any]) -> str:
    """StatusDetails without spaces (the user guide writes 'Delivery Timed Out', the API DeliveryTimedOut)."""
    return (inv.get("StatusDetails") or "").replace(" ", "")


def _ran(inv: dict[str, Any]) -> bool:
    """Whether the invocation is a finished run of the script, whose exit status and output are the result.

    Status Failed is also what AWS reports for invocations that never ran (Undeliverable, AccessDenied,
    InvalidPlatform, Terminated in StatusDetails): those are not results."""
    return inv.get("Status") in ("Success", "Failed") and _details(inv) in ("Success", "Failed", "")


def _started(inv: dict[str, Any]) -> bool:
    """Whether the agent started the script ("If the plugin hasn't started to run, the string is empty")."""
    return bool(inv.get("ExecutionStartDateTime"))


@dataclass(frozen=True)
class _Spool:
    """A spooled range on the instance: where its pages are, how many bytes each carries, its SHA-256."""

    dir: str
    pages: list[int]
    sha256: str

    @property
    def total(self) -> int:
        return sum(self.pages)

    @classmethod
    def of(cls, result: dict[str, Any], token: str, span: int) -> _Spool:
        spool = result.get("spool")
        if not isinstance(spool, dict):
            raise TransportError("the instance did not spool the read (an older bootstrap?)")
        where, pages, digest = spool.get("dir"), spool.get("pages"), spool.get("sha256")
        if (
            not isinstance(where, str)
            or not where.startswith("/")
            or any(c in where for c in "\0\n")
            or where.rsplit("/", 1)[-1] != "spool-" + token
            or not isinstance(pages, list)
            or not all(isinstance(n, int) and n > 0 for n in pages)
            or sum(pages) > span
            or not isinstance(digest, str)
            or len(digest) != 64
            or digest.strip("0123456789abcdef")
        ):
            raise TransportError("the instance described its spooled read wrongly")
        return cls(where, pages, digest)


def _size_of(result: dict[str, Any]) -> int:
    size = result.get("size")
    if not isinstance(size, int) or size < 0:
        raise TransportError("the instance answered a read without the file's size")
    return size


def _spool_data(text: str, length: int) -> bytes:
    """A spooled page's bytes: its kind (``b``: base64; ``z``: base64 of zlib), the first 16 hex digits of
    the SHA-256 of its bytes, then the data; exactly ``length`` bytes, or an error."""
    text = text.strip()
    kind, digest, body = text[:1], text[1:17], text[17:]
    if kind not in ("b", "z"):
        raise TransportError("a spooled page has no kind")
    data = protocol_page_data({"b64": body} if kind == "b" else {"z": body, "zlen": length})
    if len(data) != length or hashlib.sha256(data).hexdigest()[:16] != digest:
        raise TransportError(f"a spooled page is not the one made ({len(data)} bytes, {length} expected)")
    return data


class CommandTooLarge(TransportError):
    """SSM refused a command as larger than an SSM document may be (MaxDocumentSizeExceeded)."""


class SsmTransport(Transport):
    """Runs the runner on ``instance_id`` with SSM Run Command."""

    name = "ssm"
    max_output_chars: int | None = SSM_STDOUT_CAP - 100
    read_page_bytes = PAGE_ASK
    read_window = PAGE_WINDOW
    bulk_read_after: int | None = SPOOL_AFTER

    def __init__(
        self,
        config: SandboxConfig,
        *,
        poll_first: float = 0.1,
        poll_max: float = 5.0,
        poll_factor: float = 1.5,
        delivery_timeout: int = DELIVERY_TIMEOUT,
        pending_check_after: float = PENDING_CHECK_AFTER,
        max_command_chars: int = MAX_COMMAND_CHARS,
        retry_attempts: int = RETRY_ATTEMPTS,
    ) -> None:
        if not config.instance_id:
            raise ConfigError("the ssm transport needs instance_id (the EC2 instance to run code on)")
        self.config = config
        self.instance_id = config.instance_id
        self.poll_first = poll_first
        self.poll_max = poll_max
        self.poll_factor = poll_factor
        self.delivery_timeout = max(30, delivery_timeout)
        self.pending_check_after = pending_check_after
        self.max_command_chars = max_command_chars
        self.boto_config = Config(
            retries={"mode": "standard", "max_attempts": retry_attempts}, connect_timeout=10, read_timeout=70
        )
        self._clients: dict[str, Any] = {}
        self._session: Any = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._output_location: dict[str, str] = {}
        if config.s3_bucket:
            # The agent uploads each command's complete output: no envelope fitting, large read pages.
            self.max_output_chars = None
            self.read_page_bytes, self.read_window = S3_PAGE_BYTES, S3_PAGE_WINDOW
            self.bulk_read_after = 0  # every read: the instance uploads the range itself
            self._output_location = {"OutputS3BucketName": config.s3_bucket, "OutputS3KeyPrefix": S3_PREFIX}
        #: Whether the runner was cached on the instance by an earlier command of this transport.
        self._runner_on_target = False
        #: Recent seconds from sending a command to seeing it finished: where to poll densely.
        self._durations: collections.deque[float] = collections.deque(maxlen=16)
        self._lock = threading.Lock()

    @property
    def target(self) -> str:
        return self.instance_id

    def client(self, service: str) -> Any:
        """This transport's client for ``service``: one session, clients made once and reused (they are
        thread-safe). Made here rather than by :func:`aws_session.client` to use standard retries."""
        with self._lock:
            if service not in self._clients:
                if self._session is None:
                    self._session = aws_session.make_session(self.config)
                self._clients[service] = self._session.client(service, config=self.boto_config)
            return self._clients[service]

    # ------------------------------------------------------------------ running
    async def exec_runner(
        self, payload: bytes, *, timeout: float, on_stdout_line: LineCallback | None = None
    ) -> RunnerOutput:
        deadline = time.monotonic() + timeout
        inv = await self._exec_once(payload, deadline, ship_runner=not self._runner_on_target)
        if inv.get("ResponseCode") == RUNNER_MISSING_EXIT and RUNNER_MISSING in inv.get(
            "StandardOutputContent", ""
        ):
            # The cached copy on the instance is gone (cleaned, or a new instance behind the same id).
            log.debug("runner not cached on %s: sending it again", self.instance_id)
            inv = await self._exec_once(payload, deadline, ship_runner=True)
        stdout = inv.get("StandardOutputContent", "").encode("utf-8")
        stderr = inv.get("StandardErrorContent", "").encode("utf-8")
        if self.config.s3_bucket:
            stdout, stderr = await self._full_output(inv, stdout, stderr)
        if on_stdout_line is not None:
            for line in stdout.splitlines():
                on_stdout_line(line)
        if b'{"envelope"' not in stdout:
            raise TransportError(self._no_envelope(inv))
        self._runner_on_target = True
        return RunnerOutput(int(inv.get("ResponseCode", 0)), stdout, stderr)

    # ------------------------------------------------------------------ spooled reads
    async def bulk_read(
        self, request: dict[str, Any], sink: Callable[[bytes], object], *, timeout: float
    ) -> tuple[int, int | None]:
        """A long read without an output bucket, spooled on the instance.

        Paging through the runner costs a runner start per 17 KB page; here one runner command reads the
        range through the runner (dir fds, the owner's checks) and cuts it into pages of stdout plus stderr
        (compressed where that carries more) in the root-only staging dir, and every page is then a ``cat``
        command. The pages are a snapshot of the range; each carries the start of its own SHA-256, checked
        before it reaches ``sink``, and the whole range is checked against its SHA-256 once all have come.
        A page fetched in vain three times ends the spool early: the caller pages on from there.

        With an output bucket the instance uploads the range itself (:meth:`_read_uploaded`). Either way a
        refusal of the runner's (no such file, ...) is the caller's answer, never a reason to page on."""
        if self.config.s3_bucket:
            return await self._read_uploaded(request, sink, timeout=timeout)
        offset, length = int(request["offset"]), int(request["length"])
        carried, size = 0, None
        while carried < length:
            span = min(SPOOL_BYTES, length - carried)
            ask = dict(
                request,
                offset=offset + carried,
                length=span,
                spool={"token": secrets.token_hex(16), "out": SPOOL_OUT, "err": SPOOL_ERR},
            )
            try:
                result = await call(self, ask, timeout=timeout)
                spool = _Spool.of(result, ask["spool"]["token"], span)
                size = _size_of(result)
            except RunnerRefusal:
                raise
            except TransportError as exc:
                log.debug("could not spool a read on %s (%s): paging on", self.instance_id, exc)
                break
            got = await self._fetch_spool(spool, sink, timeout)
            carried += got
            if got < spool.total or spool.total < span:
                break
        return carried, size

    async def _fetch_spool(self, spool: _Spool, sink: Callable[[bytes], object], timeout: float) -> int:
        digest = hashlib.sha256()
        held: dict[int, bytes] = {}
        running: dict[asyncio.Task[bytes], int] = {}
        emitted = sent = carried = 0
        failed = False
        try:
            while emitted < len(spool.pages):
                while (
                    not failed
                    and sent < len(spool.pages)
                    and len(running) < SPOOL_WINDOW
                    and sent - emitted < 2 * SPOOL_WINDOW
                ):
                    running[asyncio.ensure_future(self._spool_page(spool, sent, timeout))] = sent
                    sent += 1
                if not running:
                    break
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    index = running.pop(task)
                    try:
                        held[index] = task.result()
                    except TransportError as exc:
                        log.debug("spooled page %d from %s: %s; paging on", index, self.instance_id, exc)
                        failed = True
                while emitted in held:
                    data = held.pop(emitted)
                    digest.update(data)
                    sink(data)
                    carried += len(data)
                    emitted += 1
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            if spool.pages:
                self._later(self._run([f"rm -rf -- {shlex.quote(spool.dir)}"], time.monotonic() + 60))
        if emitted == len(spool.pages) and digest.hexdigest() != spool.sha256:
            raise TransportError(
                f"a spooled read from {self.instance_id} came back corrupt (SHA-256 mismatch); read it again"
            )
        return carried

    async def _spool_page(self, spool: _Spool, index: int, timeout: float) -> bytes:
        """One page, asked for again (it is still on disk) when SSM fails to bring it - throttling past
        botocore's retries, a dropped reply - but not when the spool is gone."""
        for attempt in range(SPOOL_PAGE_ATTEMPTS):
            try:
                inv = await self._run(
                    [
                        f"cd -- {shlex.quote(spool.dir)} || exit {SPOOL_GONE}",
                        f"cat -- {index:d} || exit {SPOOL_GONE}",
                        f"cat -- {index:d}e >&2 || exit {SPOOL_GONE}",
                    ],
                    time.monotonic() + timeout,
                )
            except TransportError:
                if attempt + 1 == SPOOL_PAGE_ATTEMPTS:
                    raise
                continue
            out, err = inv.get("StandardOutputContent", ""), inv.get("StandardErrorContent", "")
            if inv.get("Status") != "Success" or _truncated(out.encode()) or _truncated(err.encode()):
                raise TransportError(
                    f"spooled page {index} on {self.instance_id}: status {inv.get('Status')}, "
                    f"exit {inv.get('ResponseCode')}"
                )
            return _spool_data(out + err, spool.pages[index])
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _read_uploaded(
        self, request: dict[str, Any], sink: Callable[[bytes], object], *, timeout: float
    ) -> tuple[int, int | None]:
        """A read with an output bucket (see :mod:`.ssm_upload`): the runner reads the range and PUTs it in
        parts to presigned URLs, and the client GETs them as soon as the instance's signed manifest is in the
        bucket or SSM reports the command done, whichever comes first: the bytes cross once each way, raw.
        A range small enough comes inline instead. A failure of the channel or of S3 hands the rest back to
        paging; the keys are deleted once the command has ended, whatever happened."""
        s3, bucket = self.client("s3"), str(self.config.s3_bucket)
        offset, length = int(request["offset"]), int(request["length"])
        carried, size = 0, None
        while carried < length:
            span = min(UPLOAD_BYTES, length - carried)
            upload = Upload.new(bucket, S3_PREFIX)
            ask = dict(request, offset=offset + carried, length=span)
            command: asyncio.Future[dict[str, Any]] | None = None
            try:
                # The URLs live as long as the command may: its delivery and its run.
                expires = min(
                    await asyncio.to_thread(self._presign_seconds, time.monotonic() + timeout),
                    math.ceil(timeout) + self.delivery_timeout,
                )
                ask["upload"] = await asyncio.to_thread(upload.request, s3, expires)
                signing = _MANIFEST_KEY.set(upload.secret.hex())
                try:  # the command's task takes the key with the context it starts in
                    command = asyncio.ensure_future(call(self, ask, timeout=timeout))
                finally:
                    _MANIFEST_KEY.reset(signing)
                result = await self._upload_answer(command, upload, s3, ask)
                size = _size_of(result)
                uploaded = result.get("uploaded")
                if isinstance(uploaded, dict):
                    parts = upload.parts(uploaded, span)
                    fetched = await asyncio.gather(
                        *(asyncio.to_thread(upload.fetch, s3, key, n) for key, n, _ in parts)
                    )
                else:
                    data = protocol_page_data(result)
                    parts, fetched = [("", len(data), "")], [(data, "")]
            except RunnerRefusal:
                raise
            except TransportError as exc:
                log.debug("could not read through s3 from %s (%s): paging on", self.instance_id, exc)
                break
            except BaseException:
                if command is not None:
                    command.cancel()  # the caller gave up: so does the instance
                raise
            finally:
                self._later(self._tidy_upload(command, upload, s3))
            for (key, want, digest), (data, got) in zip(parts, fetched, strict=True):
                if len(data) != want or got != digest or len(data) > span:
                    raise TransportError(
                        f"a read from {self.instance_id} through s3://{bucket}/{key} came back other than "
                        "the instance sent it (size or SHA-256); read it again"
                    )
            for data, _ in fetched:
                sink(data)
            got_here = sum(len(data) for data, _ in fetched)
            carried += got_here
            # A file that grows while it is read is read to the size its first answer gave.
            length = min(length, size - offset)
            if got_here < span:
                break
        return carried, size

    async def _upload_answer(
        self, command: asyncio.Future[dict[str, Any]], upload: Upload, s3: Any, request: dict[str, Any]
    ) -> dict[str, Any]:
        """The runner's answer to an uploading read: from its signed manifest in the bucket, looked for from
        when commands here usually end, or from SSM, whichever comes first. A manifest that is not the
        instance's ends the looking: SSM's answer is then the only one."""
        started, first, looking = time.monotonic(), self._expected() or 0.0, True
        while True:
            waited = time.monotonic() - started
            pause = min(POLL_MAX, max(POLL_MIN, first - waited, waited * POLL_GROWTH))
            done, _ = await asyncio.wait({command}, timeout=pause if looking else None)
            if done:
                return command.result()
            try:
                envelope = await asyncio.to_thread(upload.manifest, s3)
            except ForgedManifest as exc:
                log.warning("%s: waiting for the command's own answer on %s", exc, self.instance_id)
                looking = False
                continue
            if envelope is not None:
                result = protocol_result(envelope, request)
                if isinstance(result.get("uploaded"), dict):
                    return result
                # The instance signs only an upload's manifest: anything else was not its doing.
                log.warning("a signed manifest without an upload on %s: ignored", self.instance_id)
                looking = False

    async def _tidy_upload(self, command: asyncio.Future[Any] | None, upload: Upload, s3: Any) -> None:
        """Once the command has ended (a part may still be on its way until then), delete every key."""
        if command is not None:
            await asyncio.wait({command})
            if not command.cancelled():
                command.exception()  # the read has dealt with it, or went another way
        await asyncio.to_thread(upload.delete, s3)

    def _later(self, work: Awaitable[Any]) -> None:
        """Work nobody waits for (removing what a command left behind); :meth:`aclose` waits for it."""
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._forget)

    async def _full_output(self, inv: dict[str, Any], stdout: bytes, stderr: bytes) -> tuple[bytes, bytes]:
        """With an output bucket the agent uploaded the complete output: read what SSM cut, delete it."""
        s3 = self.client("s3")
        bucket = self.config.s3_bucket
        keys = {
            stream: output_key(inv["CommandId"], self.instance_id, stream) for stream in ("stdout", "stderr")
        }
        try:
            if len(stdout) >= SSM_STDOUT_CAP or _truncated(stdout):
                stdout = await self._s3_read(s3, bucket, keys["stdout"])
            if len(stderr) >= SSM_STDERR_CAP or _truncated(stderr):
                stderr = await self._s3_read(s3, bucket, keys["stderr"])
        finally:
            self._later(
                asyncio.to_thread(
                    s3.delete_objects,
                    Bucket=bucket,
                    Delete={"Objects": [{"Key": k} for k in keys.values()], "Quiet": True},
                )
            )
        return stdout, stderr

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not clean up after a command on %s: %s", self.instance_id, task.exception())

    async def _s3_read(self, s3: Any, bucket: str | None, key: str) -> bytes:
        try:
            reply = await asyncio.to_thread(s3.get_object, Bucket=bucket, Key=key)
            return await asyncio.to_thread(reply["Body"].read)
        except (ClientError, BotoCoreError) as exc:
            raise TransportError(
                f"SSM cut the output of the command on {self.instance_id} and its full copy could not be "
                f"read from s3://{bucket}/{key}: {exc}; the instance profile needs s3:PutObject on the "
                "bucket, and these credentials s3:GetObject"
            ) from exc

    async def settle(self) -> None:
        """Wait for the work nobody waits for (deleting what commands left, collecting the answer of a
        command whose read already ended): its calls then have all been made."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def aclose(self) -> None:
        await self.settle()

    async def _exec_once(self, payload: bytes, deadline: float, *, ship_runner: bool) -> dict[str, Any]:
        """One run of the runner: inline when it fits in one command, else staged first."""
        source = runner_source() if ship_runner else b""
        blob = zlib.compress(b"%d %d\n" % (len(source), len(payload)) + source + payload, 6)
        header: dict[str, Any] = {
            "mode": "run",
            "sha256": hashlib.sha256(blob).hexdigest(),
            "runner": runner_sha256(),
        }
        if self.config.base_sandbox_dir:
            header["base"] = self.config.base_sandbox_dir
        if self.max_output_chars:
            # A read page is fitted under the cap on the instance, compressed when that carries more.
            header["fit"] = self.max_output_chars
        key = _MANIFEST_KEY.get()
        if key is not None:
            # In the header, which is always in the command itself: the request may be staged in the
            # bucket, where whoever can read it could then sign a manifest.
            header["mac"] = key
        commands = _script(header, blob)
        if _size(commands) <= self.max_command_chars:
            try:
                return await self._run(commands, deadline)
            except CommandTooLarge as exc:
                # The size limit is AWS's to apply, and it counts more than we can see: take its word.
                log.debug("SSM refused the inline command as too large (%s): staging it", exc)
        return await self._run_staged(header, blob, deadline)

    async def _run_staged(self, header: dict[str, Any], blob: bytes, deadline: float) -> dict[str, Any]:
        """Stage ``blob`` (in chunks on the instance, or in S3) and run a command that reads it from there."""
        cleanup: Callable[[], None] | None = None
        if self.config.s3_bucket:
            header["url"], cleanup = await self._stage_s3(blob, deadline)
        else:
            header["id"], header["parts"] = await self._stage_chunks(blob, header.get("base"), deadline)
        try:
            return await self._run(_script(header), deadline)
        finally:
            if cleanup is not None:
                await asyncio.to_thread(cleanup)

    def _no_envelope(self, inv: dict[str, Any]) -> str:
        code = inv.get("ResponseCode")
        out = inv.get("StandardOutputContent", "")
        err = (inv.get("StandardErrorContent", "") or "").strip()[-1500:] or "(no stderr)"
        if code == 127:
            return (
                f"python3 was not found on {self.instance_id} (exit 127): the runner needs Python 3.8+ "
                f"on the instance's PATH; install python3 there. stderr: {err}"
            )
        if any(marker in out for marker in TRUNCATION_MARKERS):
            return (
                f"SSM cut the runner's output on {self.instance_id} before its result (stdout over "
                f"{SSM_STDOUT_CAP} characters); stderr: {err}"
            )
        status = inv.get("Status")
        return (
            f"the runner on {self.instance_id} returned no result (SSM status {status}, exit {code}): {err}"
        )

    async def _stage_chunks(self, blob: bytes, base: str | None, deadline: float) -> tuple[str, int]:
        """Store ``blob`` in a root-only staging dir on the instance, a chunk per command; several at once."""
        stage_id = secrets.token_hex(16)
        chunks = [blob[i : i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)]
        limit = asyncio.Semaphore(CHUNK_CONCURRENCY)

        async def put(index: int, chunk: bytes) -> None:
            header = {"mode": "part", "id": stage_id, "index": index, "base": base}
            async with limit:
                inv = await self._run(_script(header, chunk), deadline)
            if inv.get("Status") != "Success":
                raise TransportError(
                    f"staging part {index + 1}/{len(chunks)} of a large request on {self.instance_id} "
                    f"failed (exit {inv.get('ResponseCode')}): "
                    f"{(inv.get('StandardErrorContent') or '').strip()[-1000:]}"
                )

        log.debug("staging %d bytes on %s in %d chunks", len(blob), self.instance_id, len(chunks))
        await asyncio.gather(*(put(i, c) for i, c in enumerate(chunks)))
        return stage_id, len(chunks)

    async def _stage_s3(self, blob: bytes, deadline: float) -> tuple[str, Callable[[], None]]:
        """Put ``blob`` in the configured bucket; the instance fetches it with a short-lived presigned URL."""
        s3 = self.client("s3")
        expires = await asyncio.to_thread(self._presign_seconds, deadline)
        bucket = self.config.s3_bucket
        key = f"{S3_PREFIX}/staging/{secrets.token_hex(16)}"
        try:
            await asyncio.to_thread(s3.put_object, Bucket=bucket, Key=key, Body=blob)
            url = await asyncio.to_thread(
                s3.generate_presigned_url,
                "get_object",
                Params={"Bucket": bucket, "Key": key},
                ExpiresIn=expires,
            )
        except (ClientError, BotoCoreError) as exc:
            raise TransportError(
                f"could not stage a large request in s3://{bucket}/{key}: {exc}; check that the bucket "
                "exists in this region and the credentials allow s3:PutObject and s3:GetObject"
            ) from exc

        def cleanup() -> None:
            try:
                s3.delete_object(Bucket=bucket, Key=key)
            except (ClientError, BotoCoreError) as exc:
                log.warning("could not delete staged object s3://%s/%s: %s", bucket, key, exc)

        return url, cleanup

    def _presign_seconds(self, deadline: float) -> int:
        """How long a presigned staging URL can live. A URL signed with temporary credentials stops working
        when they expire, whatever it asked for: ask for no more, and say so when they end before the run."""
        lifetime = aws_session.credential_lifetime(self._session)
        if lifetime is None or lifetime >= PRESIGN_SECONDS:
            return PRESIGN_SECONDS
        if lifetime < MIN_PRESIGN_SECONDS:
            raise RunnerRefusal(
                "credentials",
                f"the AWS credentials expire in {max(0, int(lifetime))} s: a presigned URL for the staged "
                f"request would die with them before {self.instance_id} could fetch it; refresh the "
                "credentials (aws sso login, a new role session) and try again",
            )
        remaining = deadline - time.monotonic()
        if lifetime < remaining:
            log.warning(
                "the AWS credentials expire in %d s, within this run's %d s: the presigned URL of the staged "
                "request works only until then, and so does everything else signed with them",
                lifetime,
                remaining,
            )
        return int(lifetime)

    async def _run(self, commands: list[str], deadline: float) -> dict[str, Any]:
        """Send one command and poll it to a final status; raise on anything but Success and Failed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TransportError(f"no time left to send a command to {self.instance_id}")
        execution_timeout = min(172800, max(5, math.ceil(remaining)))
        sent = time.monotonic()
        sending = asyncio.ensure_future(self._send(commands, execution_timeout))
        try:
            command_id = await asyncio.shield(sending)
        except asyncio.CancelledError:
            # Given up while SSM was still answering: the command may already run. Learn its id and
            # cancel it rather than leave it running on the instance.
            try:
                command_id = await sending
            except Exception:  # it was never sent: nothing to cancel
                raise asyncio.CancelledError from None
            await self._cancel(command_id)
            raise
        try:
            inv = await self._poll(command_id, sent, deadline)
        except BaseException:
            await self._cancel(command_id)
            raise
        if _ran(inv):
            return inv
        raise await self._status_error(inv, execution_timeout)

    async def _send(self, commands: list[str], execution_timeout: int) -> str:
        ssm = self.client("ssm")
        try:
            reply = await asyncio.to_thread(
                ssm.send_command,
                InstanceIds=[self.instance_id],
                DocumentName="AWS-RunShellScript",
                Comment="ec2-sandbox runner",
                TimeoutSeconds=self.delivery_timeout,
                Parameters={"commands": commands, "executionTimeout": [str(execution_timeout)]},
                **self._output_location,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "MaxDocumentSizeExceeded":
                raise CommandTooLarge(
                    f"SSM refused the command for {self.instance_id} as too large: "
                    f"{exc.response['Error'].get('Message', '')}"
                ) from exc
            raise self._client_error(exc, "send a command to") from exc
        except BotoCoreError as exc:
            raise RunnerRefusal("unreachable", f"could not reach SSM for {self.instance_id}: {exc}") from exc
        command_id = reply["Command"]["CommandId"]
        log.debug("ssm command %s sent to %s", command_id, self.instance_id)
        return command_id

    async def _poll(self, command_id: str, sent: float, deadline: float) -> dict[str, Any]:
        """Poll until the command reaches a final status, in few calls.

        Once commands here have a history, the first poll is when they usually finish (no earlier: asking
        sooner mostly learns that a command still runs), followed by :data:`DENSE_POLLS` polls
        :data:`DENSE_STEP` apart, so a short command is seen within tens of milliseconds. After that the
        gap between polls grows with the time the command has run (half of it, at least ``poll_factor``
        times the last gap, at most ``poll_max``): a 1 s command costs about 7 polls, a 60 s one about 22.
        """
        ssm = self.client("ssm")
        delay = self.poll_first
        expected = self._expected()
        dense = [sent + expected + k * DENSE_STEP for k in range(DENSE_POLLS)] if expected is not None else []
        next_base = max(sent + delay, dense[0]) if dense else sent + delay
        hold_until = 0.0
        last_running = sent
        next_check = sent + self.pending_check_after
        started = False
        while True:
            now = time.monotonic()
            wake = min([next_base, *dense[:1]])
            wake = max(wake, hold_until)
            await asyncio.sleep(max(0.0, wake - now))
            asked = time.monotonic()
            dense = [t for t in dense if t > asked]
            if asked >= next_base:
                delay = min(self.poll_max, max(delay * self.poll_factor, (asked - sent) * GROWTH))
                next_base = asked + delay
            if asked > deadline:
                raise await self._deadline_error(command_id, started)
            try:
                inv = await asyncio.to_thread(
                    ssm.get_command_invocation, CommandId=command_id, InstanceId=self.instance_id
                )
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code == "InvocationDoesNotExist":
                    # Eventual consistency: the invocation appears shortly after send_command.
                    next_base = min(next_base, time.monotonic() + self.poll_first)
                    continue
                if code in THROTTLING:
                    # botocore already retried with backoff; slow down before asking again.
                    hold_until = next_base = time.monotonic() + min(self.poll_max, max(1.0, delay))
                    continue
                raise self._client_error(exc, "read the command's status on") from exc
            except BotoCoreError as exc:
                log.debug("polling %s failed, retrying: %s", command_id, exc)
                hold_until = next_base = time.monotonic() + min(self.poll_max, max(1.0, delay))
                continue
            status = inv.get("Status")
            if status not in RUNNING:
                if status in ("Success", "Failed"):
                    # The command ended between the last poll that saw it running and this one: keep the
                    # earlier bound, so the estimate can move down as well as up. When no poll saw it
                    # running, that bound is the send itself (0 s), which would make every later command
                    # start polling at once: the estimate then steps down by one dense step instead.
                    if last_running > sent:
                        self._durations.append(last_running - sent)
                    else:
                        self._durations.append(max(0.0, asked - sent - DENSE_STEP))
                return inv
            last_running = asked
            started = started or _started(inv)
            if not started and asked >= next_check:
                # Whatever the status says: AWS keeps a command to an offline agent InProgress.
                next_check = asked + RECHECK_EVERY
                problem = await self._delivery_problem()
                if problem is not None:
                    raise RunnerRefusal("unreachable", problem)

    async def _deadline_error(self, command_id: str, started: bool) -> TransportError:
        """The run's time is up: say whether the command ran at all, and why not if the instance knows."""
        if started:
            return TransportError(
                f"no result from {self.instance_id} within the time allowed; the command {command_id} was "
                "cancelled"
            )
        problem = await self._delivery_problem()
        return RunnerRefusal(
            "unreachable",
            f"the SSM agent on {self.instance_id} did not start the command {command_id} within the time "
            f"allowed: {problem or 'the agent did not pick it up'}; the command was cancelled",
        )

    def _expected(self) -> float | None:
        """A low estimate of how long commands take here: the lower quartile of recent lower bounds."""
        if not self._durations:
            return None
        ordered = sorted(self._durations)
        return ordered[len(ordered) // 4]

    async def _cancel(self, command_id: str) -> None:
        """Cancel a command the caller gave up on (best effort: it may already have ended)."""
        ssm = self.client("ssm")
        try:
            await asyncio.wait_for(
                asyncio.shield(
                    asyncio.to_thread(
                        ssm.cancel_command, CommandId=command_id, InstanceIds=[self.instance_id]
                    )
                ),
                10,
            )
            log.debug("ssm command %s cancelled", command_id)
        except (ClientError, BotoCoreError, TimeoutError, asyncio.CancelledError) as exc:
            log.debug("could not cancel ssm command %s: %s", command_id, exc)

    # ------------------------------------------------------------------ errors
    async def _status_error(self, inv: dict[str, Any], execution_timeout: int) -> TransportError:
        """The error for an invocation that ended without a result, mapped on Status and StatusDetails both
        (AWS reports Undeliverable, AccessDenied, InvalidPlatform and Terminated as Status Failed)."""
        status, details, code = inv.get("Status"), _details(inv), inv.get("ResponseCode")
        where = self.instance_id
        if details == "DeliveryTimedOut" or (status == "TimedOut" and not _started(inv)):
            problem = await self._delivery_problem()
            return RunnerRefusal(
                "unreachable",
                f"the command was not delivered to {where} within its delivery window (TimeoutSeconds "
                f"{self.delivery_timeout} s + executionTimeout {execution_timeout} s; DeliveryTimedOut): "
                f"{problem or 'the SSM agent did not pick it up'}; check the instance is running and its SSM "
                "agent is online (ec2-sandbox status)",
            )
        if details == "Undeliverable":
            problem = await self._delivery_problem()
            return RunnerRefusal(
                "unreachable",
                f"SSM could not deliver the command to {where} (Undeliverable): "
                f"{problem or 'the instance may not exist or its agent does not respond'}",
            )
        if details == "AccessDenied":
            return RunnerRefusal(
                "access_denied",
                f"SSM refused to run the command on {where} (AccessDenied): these credentials may not send "
                "commands to this instance (check ssm:SendCommand's resource and tag conditions)",
            )
        if details == "InvalidPlatform":
            return RunnerRefusal(
                "unsupported_platform",
                f"{where} is not a platform AWS-RunShellScript runs on (InvalidPlatform): the runner needs "
                "a Linux instance",
            )
        if details == "Terminated":
            return RunnerRefusal(
                "not_run",
                f"SSM terminated the command on {where} before it ran (Terminated: the command's error "
                "limit was reached)",
            )
        if status == "TimedOut" or details == "ExecutionTimedOut":
            # The agent kills the script and reports exit 137 and TimedOut (executers_unix.go, GetStatus):
            # a timeout whatever the code. The runner's own 137 never gets here: the script maps it away.
            return TransportError(
                f"SSM stopped the command on {where} after its execution timeout of {execution_timeout} s "
                f"(ExecutionTimedOut, exit {code}); the runner did not finish in time"
            )
        if status in ("Cancelled", "Cancelling") or details == "Cancelled":
            return TransportError(
                f"the command on {where} was cancelled before it finished (someone or something called "
                "CancelCommand, or the instance stopped)"
            )
        return TransportError(
            f"the command on {where} ended with SSM status {status} ({inv.get('StatusDetails')}), exit {code}"
        )

    def _client_error(self, exc: ClientError, doing: str) -> TransportError:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", "")
        where = self.instance_id
        region = self.client("ssm").meta.region_name
        if code == "InvalidInstanceId":
            return RunnerRefusal(
                "unreachable",
                f"SSM cannot {doing} {where} in {region} (InvalidInstanceId): the instance does not exist "
                "there, is not running, or is not registered with SSM - check instance_id and region, that "
                "the SSM agent runs and that the instance profile grants AmazonSSMManagedInstanceCore",
            )
        if code in ("AccessDeniedException", "AccessDenied", "UnauthorizedOperation"):
            return RunnerRefusal(
                "access_denied",
                f"access denied: the credentials may not {doing} {where} ({message}); they need "
                "ssm:SendCommand, ssm:GetCommandInvocation and ssm:CancelCommand on the instance and the "
                "AWS-RunShellScript document",
            )
        if code in THROTTLING:
            return TransportError(f"SSM kept throttling requests for {where} after retries: {message}")
        return TransportError(f"SSM could not {doing} {where}: {code}: {message}")

    async def _delivery_problem(self) -> str | None:
        """Why a command is not being delivered, if the instance or its agent says so."""
        state = await self._instance_state()
        if state is not None and state != "running":
            return f"the instance {self.instance_id} is {state}"
        ping = await self._ping()
        if ping is not None and ping != "Online":
            return f"the SSM agent on {self.instance_id} is offline (ping status {ping})"
        return None

    async def _instance_state(self) -> str | None:
        try:
            reply = await asyncio.to_thread(
                self.client("ec2").describe_instances, InstanceIds=[self.instance_id]
            )
            return reply["Reservations"][0]["Instances"][0]["State"]["Name"]
        except (ClientError, BotoCoreError, LookupError):
            return None

    async def _ping(self) -> str | None:
        try:
            info = await self._instance_information()
        except (ClientError, BotoCoreError):
            return None
        return info["PingStatus"] if info else "not registered with SSM"

    async def _instance_information(self) -> dict[str, Any] | None:
        reply = await asyncio.to_thread(
            self.client("ssm").describe_instance_information,
            Filters=[{"Key": "InstanceIds", "Values": [self.instance_id]}],
        )
        found = reply.get("InstanceInformationList") or []
        return found[0] if found else None

    # ------------------------------------------------------------------ status
    async def status_parts(self) -> list[StatusPart]:
        return list(await asyncio.gather(self._instance_part(), self._agent_part()))

    async def _instance_part(self) -> StatusPart:
        try:
            reply = await asyncio.to_thread(
                self.client("ec2").describe_instances, InstanceIds=[self.instance_id]
            )
            instance = reply["Reservations"][0]["Instances"][0]
        except ClientError as exc:
            error = exc.response.get("Error", {})
            return StatusPart(
                name="instance",
                ok=False,
                message=f"cannot describe {self.instance_id}: {error.get('Code')}: {error.get('Message')}"
                + (
                    " - check instance_id and region"
                    if "NotFound" in str(error.get("Code")) or "Malformed" in str(error.get("Code"))
                    else ""
                ),
            )
        except (BotoCoreError, LookupError) as exc:
            return StatusPart(name="instance", ok=False, message=f"cannot describe {self.instance_id}: {exc}")
        state = instance["State"]["Name"]
        details = {
            "state": state,
            "instance_type": instance.get("InstanceType"),
            "availability_zone": instance.get("Placement", {}).get("AvailabilityZone"),
            "platform": instance.get("PlatformDetails") or instance.get("Platform") or "Linux/UNIX",
        }
        return StatusPart(
            name="instance",
            ok=state == "running",
            message=f"{self.instance_id} is {state} "
            f"({details['instance_type']}, {details['availability_zone']})"
            + ("" if state == "running" else ": start it to run code"),
            details=details,
        )

    async def _agent_part(self) -> StatusPart:
        try:
            info = await self._instance_information()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            return StatusPart(
                name="ssm_agent",
                ok=False,
                message=f"cannot ask SSM about {self.instance_id}: "
                f"{error.get('Code')}: {error.get('Message')}",
            )
        except BotoCoreError as exc:
            return StatusPart(name="ssm_agent", ok=False, message=f"cannot reach SSM: {exc}")
        if info is None:
            return StatusPart(
                name="ssm_agent",
                ok=False,
                message=f"{self.instance_id} is not registered with SSM: check the SSM agent runs and the "
                "instance profile grants AmazonSSMManagedInstanceCore",
            )
        ping = info.get("PingStatus")
        details = {
            "ping_status": ping,
            "agent_version": info.get("AgentVersion"),
            "platform": " ".join(filter(None, [info.get("PlatformName"), info.get("PlatformVersion")])),
            "last_ping": str(info.get("LastPingDateTime") or ""),
        }
        return StatusPart(
            name="ssm_agent",
            ok=ping == "Online",
            message=f"SSM agent {details['agent_version']} is {ping}"
            + ("" if ping == "Online" else ": the agent is offline or the instance is not running"),
            details=details,
        )


def create_ssm_transport(config: SandboxConfig) -> SsmTransport:
    return SsmTransport(config)
