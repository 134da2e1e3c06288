"""The ssm transport against the SSM stand-in (moto, with commands really executed on this machine).

Every AWS call goes to a moto server on 127.0.0.1 through ``AWS_ENDPOINT_URL``, with fake credentials: nothing
here can reach AWS.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from ec2_sandbox import AsyncSandbox, SandboxConfig, aws_session
from ec2_sandbox.errors import TaskNotFoundError, TransportError
from ec2_sandbox.protocol import RunnerRefusal
from ec2_sandbox.testing import ssm_standin
from ec2_sandbox.testing.conformance import ConformanceSuite
from ec2_sandbox.transports import ssm as ssm_transport
from ec2_sandbox.transports.ssm import SsmTransport

REGION = "us-east-1"
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}
CLEARED = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_REGION")


@pytest.fixture(scope="module")
def ssm_server() -> Iterator[ssm_standin.Server]:
    saved = {k: os.environ.get(k) for k in (*FAKE_ENV, *CLEARED)}
    for key in CLEARED:
        os.environ.pop(key, None)
    os.environ.update(FAKE_ENV)
    with ssm_standin.serve() as server:
        os.environ["AWS_ENDPOINT_URL"] = server.url
        aws_session.clear_clients()
        try:
            yield server
        finally:
            aws_session.clear_clients()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture
def standin(ssm_server: ssm_standin.Server) -> Iterator[ssm_standin.StandIn]:
    ssm_server.standin.reset()
    yield ssm_server.standin
    ssm_server.standin.reset()


@pytest.fixture(scope="module")
def ec2(ssm_server: ssm_standin.Server):  # type: ignore[no-untyped-def]
    return boto3.client("ec2", region_name=REGION, endpoint_url=ssm_server.url)


@pytest.fixture(scope="module")
def instance_id(ssm_server: ssm_standin.Server) -> str:
    return ssm_standin.create_instance(ssm_server.url, REGION)


@pytest.fixture
def fresh_instance(ssm_server: ssm_standin.Server) -> str:
    return ssm_standin.create_instance(ssm_server.url, REGION)


def config_for(instance: str, base: str, **changes: object) -> SandboxConfig:
    return SandboxConfig(
        transport="ssm", instance_id=instance, region=REGION, base_sandbox_dir=base, **changes
    )


def quick(config: SandboxConfig, **options: float) -> SsmTransport:
    """The ssm transport polling faster than its defaults: for tests that make hundreds of round trips."""
    return SsmTransport(config, poll_first=0.02, poll_factor=1.3, poll_max=0.2, **options)  # type: ignore[arg-type]


def large_files_sandbox(instance: str, base: str) -> AsyncSandbox:
    """A sandbox that reads back files of up to 20 MB, polling quickly."""
    config = config_for(instance, base, max_file_size_mb=20)
    return AsyncSandbox(config, transport=quick(config))


def assert_the_command_was_cancelled(standin: ssm_standin.StandIn) -> None:
    """One CancelCommand, and the only command ended Cancelled: a running one ends only once its process is
    gone, hence the wait."""
    assert standin.calls["CancelCommand"] == 1
    (inv,) = standin.invocations.values()
    assert inv.done.wait(5) and inv.status == "Cancelled"


# ---------------------------------------------------------------------- the conformance suite


class TestSsmConformance(ConformanceSuite):
    """The core's conformance suite, unchanged, through the registered ``ssm`` transport."""

    @pytest.fixture
    async def sandbox(
        self, standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
    ) -> AsyncIterator[AsyncSandbox]:
        async with AsyncSandbox(config_for(instance_id, tmp_base_dir)) as sandbox:
            assert sandbox.transport.name == "ssm"
            yield sandbox


# ---------------------------------------------------------------------- results and data


async def test_print_is_one_command_and_few_calls(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    started = time.monotonic()
    async with AsyncSandbox(config_for(instance_id, tmp_base_dir)) as sandbox:
        result = await sandbox.execute_code("print(1)")
    elapsed = time.monotonic() - started
    assert result.success and result.stdout == "1\n" and result.transport == "ssm"
    assert standin.calls["SendCommand"] == 1
    # Polls follow the documented schedule of a transport with no history (0.1 s, then gaps growing by
    # half): 3 for a command done within 0.475 s, one more for each later step - never more than the steps
    # that fit the call's whole time, however slow the machine made the command.
    assert standin.calls["GetCommandInvocation"] <= max(3, _schedule_polls(elapsed))


def _schedule_polls(duration: float) -> int:
    """Polls a fresh transport makes for a command that ends by ``duration`` (see ``SsmTransport._poll``)."""
    at, delay, polls = 0.1, 0.1, 1
    while at < duration:
        delay = max(delay * 1.5, at * ssm_transport.GROWTH)
        at += delay
        polls += 1
    return polls


async def test_commands_faster_than_the_first_poll_do_not_reset_the_poll_schedule(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    """A command already finished at its first poll says only that it took less than that: the estimate of
    when commands finish steps down, not to zero, so slower commands later are still caught in few polls."""
    transport = SsmTransport(config_for(instance_id, tmp_base_dir))
    deadline = time.monotonic() + 60
    standin.delivery_latency = 0.4
    for _ in range(4):
        await transport._run(["true"], deadline)
    standin.delivery_latency = 0.0
    for _ in range(4):  # each finished before its first poll
        await transport._run(["true"], deadline)
    standin.delivery_latency = 0.4
    before = standin.calls["GetCommandInvocation"]
    await transport._run(["true"], deadline)
    # An estimate reset to zero polls at 0, 30, 60, 100, 250 and 475 ms: 6 polls for a 0.4 s command. Stepped
    # down, the first poll comes near 0.4 s: 3 or 4, and 5 when the machine's load slows the command itself.
    assert standin.calls["GetCommandInvocation"] - before <= 5


async def test_runner_is_cached_on_the_instance_and_resent_when_gone(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    async with AsyncSandbox(config_for(instance_id, tmp_base_dir)) as sandbox:
        assert (await sandbox.execute_code("print('first')")).stdout == "first\n"
        assert (await sandbox.execute_code("print('second')")).stdout == "second\n"
        first, second = [inv.script for inv in standin.invocations.values()]
        assert len(second) < len(first) - 10000  # the runner travelled once
        staging = os.path.join(tmp_base_dir, "staging")
        (cached,) = [name for name in os.listdir(staging) if name.startswith("runner-")]
        os.unlink(os.path.join(staging, cached))
        assert (await sandbox.execute_code("print('third')")).stdout == "third\n"
    codes = [inv.response_code for inv in standin.invocations.values()]
    assert codes == [0, 0, ssm_transport.RUNNER_MISSING_EXIT, 0]
    assert os.path.exists(os.path.join(staging, cached))


async def test_failing_run_is_a_result_with_its_traceback(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    code = "def f():\n    raise ValueError('boom at depth')\nf()"
    async with AsyncSandbox(config_for(instance_id, tmp_base_dir)) as sandbox:
        result = await sandbox.execute_code(code)
    assert not result.success and result.return_code == 1
    assert result.termination_reason == "exited"
    assert "Traceback (most recent call last)" in result.stderr
    assert "ValueError: boom at depth" in result.stderr and "in f" in result.stderr


async def test_hostile_text_travels_as_data(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    hostile = "EC2_SANDBOX_DATA\n'; touch /tmp/ec2sb-pwned; echo '$(id) `id` \"\\\n\x01\u00e9\U0001f600"
    code = "import os, sys\nsys.stdout.write(os.environ['X'] + '|' + open('in.txt').read())"
    async with AsyncSandbox(config_for(instance_id, tmp_base_dir)) as sandbox:
        result = await sandbox.execute_code(
            code + "\n# " + hostile.replace("\n", " "), files={"in.txt": hostile}, env_vars={"X": hostile}
        )
    assert result.success, result
    assert result.stdout == hostile + "|" + hostile
    assert not os.path.exists("/tmp/ec2sb-pwned")


async def test_5mb_of_stdout_comes_back_byte_exact(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    code = (
        "import hashlib, sys\nout = sys.stdout.buffer\n"
        "for i in range(80000):\n"
        "    out.write(hashlib.sha256(str(i).encode()).hexdigest().encode() + b'\\n')\n"
    )
    expected = b"".join(hashlib.sha256(str(i).encode()).hexdigest().encode() + b"\n" for i in range(80000))
    assert len(expected) == 5_200_000
    async with large_files_sandbox(instance_id, tmp_base_dir) as sandbox:
        result = await sandbox.execute_code(code)
        assert result.success and result.stdout_truncated and result.stdout_bytes == len(expected)
        assert result.stdout.startswith(expected[:1000].decode())
        assert result.stdout.endswith(expected[-1000:].decode())
        full = await sandbox.get_task_files(result.task_hash, "@stdout")
    assert full == expected.decode()
    # Every answer fitted SSM's 24,000-character cap: nothing was cut.
    assert all(ssm_standin.TRUNCATION_MARKER not in inv.stdout for inv in standin.invocations.values())


def _read_pages(standin: ssm_standin.StandIn) -> list[ssm_standin.Invocation]:
    """The commands that answered a read request (a read page's envelope) or sent a spooled page."""
    return [inv for inv in standin.invocations.values() if '"offset":' in inv.stdout or _spooled(inv)]


def _spooled(inv: ssm_standin.Invocation) -> bool:
    return "/spool-" in inv.script and "cat -- " in inv.script


async def test_pages_read_in_parallel_reassemble_under_reordering_and_throttling(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    """Read pages go out several at once, start and finish in another order than sent (random delivery
    latency), meet throttling on both calls, and still come back byte-exact."""
    blob = os.urandom(600_000)
    text = "".join(f"{i:08d} line of a log that compresses well\n" for i in range(30_000)).encode()
    code = (
        "import base64\n"
        f"open('blob.bin', 'wb').write(base64.b64decode({base64.b64encode(blob).decode()!r}))\n"
        "open('log.txt', 'w').write(''.join(f'{i:08d} line of a log that compresses well\\n' "
        "for i in range(30000)))\n"
    )
    async with large_files_sandbox(instance_id, tmp_base_dir) as sandbox:
        result = await sandbox.execute_code(code)
        assert result.success, result
        standin.delivery_jitter = 0.3
        standin.throttle("GetCommandInvocation", 6)
        standin.throttle("SendCommand", 3)
        assert await sandbox.get_task_files(result.task_hash, "blob.bin") == blob
        assert await sandbox.get_task_files(result.task_hash, "log.txt") == text.decode()
    pages = _read_pages(standin)
    assert standin.peak_running > 1  # pages ran side by side
    started = [inv.started for inv in sorted(pages, key=lambda inv: inv.requested)]
    assert started != sorted(started)  # and not in the order they were sent


async def test_compression_carries_more_and_never_grows_incompressible_pages(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    make_random = "open('random.bin', 'wb').write(os.urandom(400000))"
    make_text = "open('text.txt', 'w').write(''.join(f'{i:09d}\\n' for i in range(200000)))"
    code = "\n".join(["import os", make_random, make_text])
    async with large_files_sandbox(instance_id, tmp_base_dir) as sandbox:
        result = await sandbox.execute_code(code)
        before = set(standin.invocations)
        random_data = await sandbox.get_task_files(result.task_hash, "random.bin")
        random_pages = [standin.invocations[k] for k in set(standin.invocations) - before]
        before = set(standin.invocations)
        text = await sandbox.get_task_files(result.task_hash, "text.txt")
        text_pages = [standin.invocations[k] for k in set(standin.invocations) - before]
    assert isinstance(random_data, bytes) and len(random_data) == 400_000
    assert text == "".join(f"{i:09d}\n" for i in range(200_000))
    plain_page = (ssm_transport.SSM_STDOUT_CAP - 1000) * 3 // 4
    # Random bytes travel as base64, never packed, and no page carries less than a plain page would (the
    # first page, the spooling command and its clean-up besides).
    assert all('"z":' not in inv.stdout and not inv.stdout.startswith("z") for inv in random_pages)
    assert len(random_pages) <= -(-400_000 // plain_page) + 3
    # Text travels packed: 2 MB in a fraction of the commands plain pages would take.
    assert any('"z":' in inv.stdout or inv.stdout.startswith("z") for inv in text_pages)
    assert len(text_pages) * 4 <= 2_000_000 // plain_page
    assert all(ssm_standin.TRUNCATION_MARKER not in inv.stdout for inv in standin.invocations.values())


async def test_a_long_read_is_spooled_once_and_each_page_is_a_cat(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    """Past its first page a long read is cut into pages once, on the instance, in a root-only spool; each
    page is then one command that runs no Python (stdout and stderr both carry it), and the spool is gone
    once the read is done."""
    blob = os.urandom(1_500_000)
    config = config_for(instance_id, tmp_base_dir, max_file_size_mb=20)
    async with AsyncSandbox(config, transport=quick(config)) as sandbox:
        made = await sandbox.execute_code(
            f"import base64\nopen('b.bin', 'wb').write(base64.b64decode({base64.b64encode(blob).decode()!r}))"
        )
        assert made.success, made
        before = set(standin.invocations)
        assert await sandbox.get_task_files(made.task_hash, "b.bin") == blob
        read = [standin.invocations[k] for k in set(standin.invocations) - before]
    cats = [inv for inv in read if _spooled(inv)]
    runner_starts = [inv for inv in read if "python3" in inv.script]
    assert len(runner_starts) == 2  # the first page, and the command that spooled the rest
    per_page = (ssm_transport.SPOOL_OUT + ssm_transport.SPOOL_ERR) * 3 // 4 - 512
    assert len(cats) <= -(-1_500_000 // per_page)
    assert all(inv.stderr and inv.status == "Success" for inv in cats[:-1])  # stderr carries its share
    staging = os.path.join(tmp_base_dir, "staging")
    assert os.stat(staging).st_mode & 0o777 == 0o700
    assert [name for name in os.listdir(staging) if name.startswith("spool-")] == []


def _watch_spools(
    standin: ssm_standin.StandIn, act: Callable[[str], None], stop: threading.Event
) -> threading.Thread:
    """Run ``act`` on each spool once the command that made it has finished (as root on the instance
    could), before the pages are asked for (they have a delivery latency to pass first)."""

    def watch() -> None:
        seen: set[str] = set()
        while not stop.is_set():
            for inv in list(standin.invocations.values()):
                if inv.command_id not in seen and inv.done.is_set() and '"spool":{"dir":' in inv.stdout:
                    seen.add(inv.command_id)
                    act(json.loads(inv.stdout.strip().splitlines()[-1])["envelope"]["result"]["spool"]["dir"])
            stop.wait(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _alter_page(path: str, index: int) -> None:
    """Page ``index`` rewritten with other bytes of the same length and kind, its digest kept."""
    with open(os.path.join(path, str(index)), "r+") as fh:
        text = fh.read()
        fh.seek(0)
        fh.write(text[:17] + base64.b64encode(os.urandom(len(text)))[: len(text) - 17].decode())


@pytest.mark.parametrize("harm", ["removed", "altered", "altered and another removed"])
async def test_a_spool_lost_or_altered_on_the_way_never_yields_wrong_bytes(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str, harm: str
) -> None:
    """Whatever becomes of a spool between its making and its pages' fetching - removed, a page altered
    (same length, other bytes), a page altered and a later one removed - the read hands over only checked
    bytes: each page is checked against its own digest before it reaches the caller, and the rest is read
    through the runner, byte-exact."""
    blob = os.urandom(400_000)
    standin.delivery_latency = 0.2  # the pages are asked for after the watcher has acted

    def act(path: str) -> None:
        if harm == "removed":
            shutil.rmtree(path)
            return
        _alter_page(path, 0 if "another" in harm else 1)
        if "another" in harm:
            os.unlink(os.path.join(path, "5"))

    stop = threading.Event()
    watcher = _watch_spools(standin, act, stop)
    config = config_for(instance_id, tmp_base_dir, max_file_size_mb=20)
    try:
        async with AsyncSandbox(config, transport=quick(config)) as sandbox:
            encoded = base64.b64encode(blob).decode()
            made = await sandbox.execute_code(
                f"import base64\nopen('b.bin','wb').write(base64.b64decode({encoded!r}))"
            )
            before = len(standin.invocations)
            assert await sandbox.get_task_files(made.task_hash, "b.bin") == blob
            fell_back = [
                inv for inv in list(standin.invocations.values())[before:] if '"offset":' in inv.stdout
            ]
            assert len(fell_back) > 1  # the first page, and pages through the runner after the harm
    finally:
        stop.set()
        watcher.join()


async def test_a_spooled_page_ssm_fails_to_bring_is_asked_for_again(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    """A page whose command SSM throttles past the client's retries is asked for again: the spool is still
    on disk, and the read needs no page through the runner."""
    config = config_for(instance_id, tmp_base_dir, max_file_size_mb=20)
    transport = SsmTransport(config, poll_first=0.02, poll_factor=1.3, poll_max=0.2, retry_attempts=1)
    async with AsyncSandbox(config, transport=transport) as sandbox:
        made = await sandbox.execute_code("import os\nopen('b.bin', 'wb').write(os.urandom(300000))")
        with open(os.path.join(tmp_base_dir, "tasks", made.task_hash, "b.bin"), "rb") as fh:
            expected = fh.read()
        spooled = threading.Event()

        def throttle_once(path: str) -> None:
            standin.throttle("SendCommand", 2)
            spooled.set()

        stop = threading.Event()
        watcher = _watch_spools(standin, throttle_once, stop)
        standin.delivery_latency = 0.1
        try:
            before = len(standin.invocations)
            assert await sandbox.get_task_files(made.task_hash, "b.bin") == expected
        finally:
            stop.set()
            watcher.join()
    assert spooled.is_set()
    runner_starts = [inv for inv in list(standin.invocations.values())[before:] if "python3" in inv.script]
    assert len(runner_starts) == 2  # the first page and the spool: no page fell back to the runner


async def test_a_stale_spool_is_swept_and_a_fresh_one_kept(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    """Spools a client left behind (it died mid-read) go once they are 15 minutes old; younger ones stay."""
    staging = os.path.join(tmp_base_dir, "staging")
    config = config_for(instance_id, tmp_base_dir, max_file_size_mb=20)
    async with AsyncSandbox(config, transport=quick(config)) as sandbox:
        made = await sandbox.execute_code("import os\nopen('b.bin', 'wb').write(os.urandom(300000))")
        stale, young = (os.path.join(staging, "spool-" + os.urandom(16).hex()) for _ in range(2))
        for path in (stale, young):
            os.mkdir(path, 0o700)
        os.utime(stale, (time.time() - 901, time.time() - 901))
        assert len(await sandbox.get_task_files(made.task_hash, "b.bin")) == 300_000
    assert not os.path.exists(stale) and os.path.isdir(young)


@pytest.mark.parametrize(
    "spool",
    [
        None,
        {"dir": "relative/spool-TOKEN", "pages": [1], "sha256": "0" * 64},
        {"dir": "/x/spool-" + "0" * 32, "pages": [1], "sha256": "0" * 64},  # not the token asked for
        {"dir": "/x/spool-TOKEN\nrm -rf /", "pages": [1], "sha256": "0" * 64},
        {"dir": "/x/spool-TOKEN", "pages": [0], "sha256": "0" * 64},
        {"dir": "/x/spool-TOKEN", "pages": [1 << 20, 1], "sha256": "0" * 64},  # more than was asked
        {"dir": "/x/spool-TOKEN", "pages": [1], "sha256": "z" * 64},
    ],
)
def test_a_spool_described_wrongly_is_refused(spool: dict[str, object] | None) -> None:
    token = "ab" * 16
    if spool is not None:
        spool = {k: v.replace("TOKEN", token) if isinstance(v, str) else v for k, v in spool.items()}
    with pytest.raises(TransportError):
        ssm_transport._Spool.of({"spool": spool}, token, 1 << 20)


def _page(kind: str, data: bytes, body: bytes) -> str:
    return kind + hashlib.sha256(data).hexdigest()[:16] + base64.b64encode(body).decode()


@pytest.mark.parametrize(
    ("text", "length"),
    [
        (_page("b", b"abc", b"abc"), 4),  # shorter than it says
        (_page("x", b"abc", b"abc"), 3),  # no such kind
        (_page("z", b"a" * 100, zlib.compress(b"a" * 100)), 99),  # unpacks to more
        (_page("z", b"abc", b"not zlib"), 3),
        (_page("b", b"abd", b"abc"), 3),  # not the bytes its digest names
        ("b" + "0" * 16 + "!!!!", 3),
    ],
)
def test_a_spooled_page_that_is_not_what_it_says_is_refused(text: str, length: int) -> None:
    with pytest.raises(TransportError):
        ssm_transport._spool_data(text, length)


def test_a_spooled_page_that_is_what_it_says_is_taken() -> None:  # the positive control
    assert ssm_transport._spool_data(_page("b", b"abc", b"abc"), 3) == b"abc"
    assert ssm_transport._spool_data(_page("z", b"a" * 100, zlib.compress(b"a" * 100)), 100) == b"a" * 100


async def test_10mb_binary_input_arrives_intact_in_chunks(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    data = os.urandom(10 * 1024 * 1024)
    code = "import hashlib\nprint(hashlib.sha256(open('blob.bin', 'rb').read()).hexdigest())"
    config = config_for(instance_id, tmp_base_dir, max_file_size_mb=50)
    async with AsyncSandbox(config, transport=quick(config)) as sandbox:
        result = await sandbox.execute_code(code, files={"blob.bin": data}, timeout=120)
    assert result.success, result
    assert result.stdout.strip() == hashlib.sha256(data).hexdigest()
    assert standin.calls["SendCommand"] > 100  # staged over many commands, none above SSM's size limit
    staging = os.path.join(tmp_base_dir, "staging")
    assert os.stat(staging).st_mode & 0o777 == 0o700
    leftover = [name for name in os.listdir(staging) if not name.startswith(("runner-", "__pycache__"))]
    assert leftover == []  # parts are removed once assembled


async def test_large_input_staged_through_s3(
    ssm_server: ssm_standin.Server, standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=ssm_server.url)
    s3.create_bucket(Bucket="ec2sb-staging")
    data = os.urandom(10 * 1024 * 1024)
    code = "import hashlib\nprint(hashlib.sha256(open('blob.bin', 'rb').read()).hexdigest())"
    config = config_for(instance_id, tmp_base_dir, max_file_size_mb=50, s3_bucket="ec2sb-staging")
    async with AsyncSandbox(config, transport=quick(config)) as sandbox:
        result = await sandbox.execute_code(code, files={"blob.bin": data}, timeout=120)
    assert result.success, result
    assert result.stdout.strip() == hashlib.sha256(data).hexdigest()
    assert standin.calls["SendCommand"] == 1
    assert s3.list_objects_v2(Bucket="ec2sb-staging").get("KeyCount", 0) == 0  # staged object deleted


async def test_output_bucket_gives_whole_output_in_few_commands(
    ssm_server: ssm_standin.Server, standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=ssm_server.url)
    s3.create_bucket(Bucket="ec2sb-output")
    code = (
        "import sys\nfor i in range(500000):\n    sys.stdout.write(f'{i:09d}\\n')\n"
        "print('x' * 30000, file=sys.stderr)"
    )
    expected = "".join(f"{i:09d}\n" for i in range(500000))
    config = config_for(instance_id, tmp_base_dir, max_file_size_mb=20, s3_bucket="ec2sb-output")
    async with AsyncSandbox(config, transport=quick(config)) as sandbox:
        assert sandbox.transport.max_output_chars is None
        result = await sandbox.execute_code(code)
        assert result.success and result.stdout_bytes == len(expected)
        assert result.stdout.startswith("000000000\n") and result.stdout.endswith("000499999\n")
        assert result.stderr_bytes == 30001
        assert await sandbox.get_task_files(result.task_hash, "@stdout") == expected
    assert standin.calls["SendCommand"] == 2  # the run, and one read of the whole 5 MB
    first = next(iter(standin.invocations.values()))
    assert ssm_standin.TRUNCATION_MARKER in first.stdout  # SSM cut it; the transport read S3's copy
    assert s3.list_objects_v2(Bucket="ec2sb-output").get("KeyCount", 0) == 0  # outputs deleted


async def test_with_an_output_bucket_a_read_is_one_command_and_the_instance_uploads_it(
    ssm_server: ssm_standin.Server, standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    """With ``s3_bucket`` a read of any size is one command: the runner PUTs the range to a presigned URL
    (raw bytes, once) and the client GETs it, checked by size and SHA-256; a small range comes inline; a
    missing file is refused in that same command; nothing is left in the bucket."""
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=ssm_server.url)
    s3.create_bucket(Bucket="ec2sb-reads")
    config = config_for(instance_id, tmp_base_dir, max_file_size_mb=20, s3_bucket="ec2sb-reads")
    async with AsyncSandbox(config, transport=quick(config)) as sandbox:
        made = await sandbox.execute_code(
            "import os\nopen('big.bin', 'wb').write(os.urandom(12_000_000))\n"
            "open('small.bin', 'wb').write(os.urandom(5000))"
        )
        assert made.success, made
        with open(os.path.join(tmp_base_dir, "tasks", made.task_hash, "big.bin"), "rb") as fh:
            big = fh.read()
        with open(os.path.join(tmp_base_dir, "tasks", made.task_hash, "small.bin"), "rb") as fh:
            small = fh.read()
        for name, expected in (("big.bin", big), ("small.bin", small)):
            before = standin.calls["SendCommand"]
            assert await sandbox.get_task_files(made.task_hash, name) == expected
            assert standin.calls["SendCommand"] - before == 1
        tail = await sandbox.read_task_file(made.task_hash, "big.bin", offset=11_000_000, max_bytes=500_000)
        assert base64.b64decode(tail.content) == big[11_000_000:11_500_000]
        before = standin.calls["SendCommand"]
        with pytest.raises(TaskNotFoundError):
            await sandbox.get_task_files(made.task_hash, "missing.bin")
        assert standin.calls["SendCommand"] - before == 1
    uploads = [inv for inv in standin.invocations.values() if '"uploaded":' in inv.stdout]
    assert len(uploads) == 2  # the whole file and its tail; the small one came inline
    assert s3.list_objects_v2(Bucket="ec2sb-reads").get("KeyCount", 0) == 0


async def test_with_an_output_bucket_an_upload_that_fails_pages_on(
    ssm_server: ssm_standin.Server,
    standin: ssm_standin.StandIn,
    instance_id: str,
    tmp_base_dir: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An instance that cannot PUT to the URL (a bucket policy, an endpoint it cannot reach) still gets the
    file back, byte-exact, through the command output the agent uploads."""
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=ssm_server.url)
    s3.create_bucket(Bucket="ec2sb-refusing")
    config = config_for(instance_id, tmp_base_dir, max_file_size_mb=20, s3_bucket="ec2sb-refusing")
    transport = quick(config)
    real = transport.client

    def client(service: str) -> object:
        made = real(service)
        if service == "s3":  # URLs for a bucket that does not exist: every PUT to them fails
            sign = made.generate_presigned_url
            monkeypatch.setattr(
                made,
                "generate_presigned_url",
                lambda op, Params, **kw: sign(op, Params={**Params, "Bucket": "ec2sb-nowhere"}, **kw),
            )
        return made

    monkeypatch.setattr(transport, "client", client)
    async with AsyncSandbox(config, transport=transport) as sandbox:
        made = await sandbox.execute_code("import os\nopen('big.bin', 'wb').write(os.urandom(3_000_000))")
        with open(os.path.join(tmp_base_dir, "tasks", made.task_hash, "big.bin"), "rb") as fh:
            expected = fh.read()
        assert await sandbox.get_task_files(made.task_hash, "big.bin") == expected
    assert any("Traceback" in inv.stderr for inv in standin.invocations.values())  # the failed PUT


async def test_reserved_exit_statuses_never_reach_ssm(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    """A runner killed by SIGKILL (exit 137) or exiting 194 must not read as TimedOut / reboot."""
    transport = quick(config_for(instance_id, tmp_base_dir))
    for source, note in [
        (b"import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "killed"),
        (b"import sys\nsys.exit(194)\n", "194"),
    ]:
        blob = zlib.compress(b"%d 0\n" % len(source) + source)
        header = {
            "mode": "run",
            "sha256": hashlib.sha256(blob).hexdigest(),
            "runner": hashlib.sha256(source).hexdigest(),
            "base": tmp_base_dir,
        }
        inv = await transport._run(ssm_transport._script(header, blob), time.monotonic() + 30)
        assert inv["Status"] == "Failed", note
        assert inv["ResponseCode"] == 3, note


async def test_timed_out_is_a_timeout_whatever_the_code(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    """The agent SIGKILLs a script past executionTimeout and reports TimedOut with exit 137 - and reports any
    exit 137 as TimedOut (GetStatus): both are timeouts, not "out of memory"."""
    transport = quick(config_for(instance_id, tmp_base_dir))
    with pytest.raises(TransportError) as exit_137:
        await transport._run(["exit 137"], time.monotonic() + 30)
    command_id = await transport._send(["sleep 30"], 1)
    inv = await transport._poll(command_id, time.monotonic(), time.monotonic() + 30)
    assert inv["Status"] == "TimedOut" and inv["StatusDetails"] == "ExecutionTimedOut"
    assert inv["ResponseCode"] == 137
    killed = await transport._status_error(inv, 1)
    for error in (exit_137.value, killed):
        assert "execution timeout" in str(error) and "ExecutionTimedOut, exit 137" in str(error)
        assert "memory" not in str(error)


# ---------------------------------------------------------------------- the SSM service misbehaving


async def test_throttling_and_invocation_race_are_survived(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    standin.missing_polls = 3
    standin.throttle("SendCommand", 2)
    standin.throttle("GetCommandInvocation", 3)
    config = config_for(instance_id, tmp_base_dir)
    async with AsyncSandbox(config) as sandbox:
        result = await sandbox.execute_code("print('through')")
    assert result.success and result.stdout == "through\n"
    assert standin.calls["SendCommand"] == 3  # two throttled, retried by botocore
    assert standin.calls["GetCommandInvocation"] >= 7  # 3 throttled + 3 missing + the answer


async def test_throttling_beyond_botocore_retries_is_absorbed_by_the_poll_loop(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    standin.throttle("GetCommandInvocation", 5)
    config = config_for(instance_id, tmp_base_dir)
    # botocore gives up after two attempts here: the poll loop must wait and ask again on its own.
    async with AsyncSandbox(config, transport=quick(config, retry_attempts=2)) as sandbox:
        result = await sandbox.execute_code("print('patient')")
    assert result.success and result.stdout == "patient\n"
    assert standin.calls["GetCommandInvocation"] >= 6


async def test_unknown_instance_is_a_clear_error(standin: ssm_standin.StandIn, tmp_base_dir: str) -> None:
    async with AsyncSandbox(config_for("i-0123456789abcdef0", tmp_base_dir)) as sandbox:
        result = await sandbox.execute_code("print(1)")
        assert not result.success and result.termination_reason == "not_started"
        assert "InvalidInstanceId" in (result.error_message or "")
        assert "region" in (result.error_message or "")
        status = await sandbox.instance_status()
    parts = {p.name: p for p in status.parts}
    assert not status.healthy
    assert not parts["instance"].ok and "i-0123456789abcdef0" in parts["instance"].message
    assert not parts["ssm_agent"].ok and "not registered" in parts["ssm_agent"].message
    assert not parts["probe"].ok


async def test_stopped_instance_is_reported_as_stopped(
    standin: ssm_standin.StandIn,
    fresh_instance: str,
    ec2,
    tmp_base_dir: str,  # type: ignore[no-untyped-def]
) -> None:
    ec2.stop_instances(InstanceIds=[fresh_instance])
    standin.delivery_timeout = 1.0
    config = config_for(fresh_instance, tmp_base_dir)
    async with AsyncSandbox(config, transport=quick(config)) as sandbox:
        result = await sandbox.execute_code("print(1)")
        assert not result.success and result.termination_reason == "not_started"
        message = result.error_message or ""
        assert "DeliveryTimedOut" in message and "stopped" in message, message
        # AWS's delivery window is TimeoutSeconds plus executionTimeout, and the message says so.
        assert f"TimeoutSeconds {ssm_transport.DELIVERY_TIMEOUT} s + executionTimeout " in message
        status = await sandbox.instance_status()
    parts = {p.name: p for p in status.parts}
    assert not parts["instance"].ok and "stopped" in parts["instance"].message
    assert parts["instance"].details["state"] == "stopped"
    assert not parts["ssm_agent"].ok and "ConnectionLost" in parts["ssm_agent"].message


async def test_offline_agent_is_detected_while_pending_and_the_command_cancelled(
    standin: ssm_standin.StandIn, fresh_instance: str, tmp_base_dir: str
) -> None:
    standin.ping_status[fresh_instance] = "ConnectionLost"
    config = config_for(fresh_instance, tmp_base_dir)
    async with AsyncSandbox(config, transport=quick(config, pending_check_after=0.3)) as sandbox:
        result = await sandbox.execute_code("print(1)")
    assert not result.success and result.termination_reason == "not_started"
    assert "offline" in (result.error_message or "") and "ConnectionLost" in (result.error_message or "")
    assert standin.calls["CancelCommand"] == 1
    (inv,) = standin.invocations.values()
    assert inv.status == "Cancelled"


async def test_access_denied_is_a_clear_error(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    standin.fail(
        "SendCommand", "AccessDeniedException", "User: arn:aws:iam::123456789012:user/x is not authorized"
    )
    async with AsyncSandbox(config_for(instance_id, tmp_base_dir)) as sandbox:
        result = await sandbox.execute_code("print(1)")
    assert not result.success and result.termination_reason == "not_started"
    assert "access denied" in (result.error_message or "")
    assert "ssm:SendCommand" in (result.error_message or "")


async def test_offline_agent_is_found_when_the_command_stays_in_progress(
    ssm_server: ssm_standin.Server, standin: ssm_standin.StandIn, fresh_instance: str, tmp_base_dir: str
) -> None:
    """AWS keeps a command to an unavailable agent InProgress (not Pending): the check must not wait for
    Pending, and a run whose time runs out before the agent starts it says so."""
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=ssm_server.url)
    standin.ping_status[fresh_instance] = "ConnectionLost"
    cid = ssm.send_command(
        InstanceIds=[fresh_instance], DocumentName="AWS-RunShellScript", Parameters={"commands": ["true"]}
    )["Command"]["CommandId"]
    inv = ssm.get_command_invocation(CommandId=cid, InstanceId=fresh_instance)
    assert (inv["Status"], inv["ExecutionStartDateTime"], inv["ResponseCode"]) == ("InProgress", "", -1)
    standin.reset()
    standin.ping_status[fresh_instance] = "ConnectionLost"
    transport = quick(config_for(fresh_instance, tmp_base_dir), pending_check_after=60)
    started = time.monotonic()
    with pytest.raises(TransportError, match="did not start the command") as late:
        await transport._run(["true"], time.monotonic() + 2)
    assert "offline (ping status ConnectionLost)" in str(late.value)
    assert time.monotonic() - started < 10
    assert_the_command_was_cancelled(standin)


@pytest.mark.parametrize(
    ("details", "kind", "words"),
    [
        ("Undeliverable", "unreachable", "could not deliver the command"),
        ("AccessDenied", "access_denied", "may not send commands to this instance"),
        ("InvalidPlatform", "unsupported_platform", "needs a Linux instance"),
        ("Terminated", "not_run", "terminated the command"),
    ],
)
async def test_terminal_details_under_status_failed_are_explained(
    standin: ssm_standin.StandIn, fresh_instance: str, tmp_base_dir: str, details: str, kind: str, words: str
) -> None:
    standin.outcome[fresh_instance] = details
    async with AsyncSandbox(config_for(fresh_instance, tmp_base_dir)) as sandbox:
        result = await sandbox.execute_code("print(1)")
    assert not result.success and result.termination_reason == "not_started"
    assert f"({details}" in (result.error_message or "") and words in (result.error_message or "")
    (inv,) = standin.invocations.values()
    assert (inv.status, inv.details, inv.response_code) == ("Failed", details, -1)
    transport = quick(config_for(fresh_instance, tmp_base_dir))
    with pytest.raises(RunnerRefusal) as refused:
        await transport._run(["true"], time.monotonic() + 30)
    assert refused.value.kind == kind


def test_standin_ends_undeliverable_and_wrong_platform_commands_as_aws_does(
    ssm_server: ssm_standin.Server, standin: ssm_standin.StandIn, fresh_instance: str, ec2
) -> None:  # type: ignore[no-untyped-def]
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=ssm_server.url)

    def final(instance: str, cid: str) -> dict:  # type: ignore[type-arg]
        for _ in range(200):
            inv = ssm.get_command_invocation(CommandId=cid, InstanceId=instance)
            if inv["Status"] not in ("Pending", "InProgress"):
                return inv
            time.sleep(0.05)
        raise AssertionError(inv)

    def send(instance: str, **extra: object) -> str:
        return ssm.send_command(
            InstanceIds=[instance],
            DocumentName="AWS-RunShellScript",
            Parameters={"commands": ["true"], "executionTimeout": ["5"]},
            **extra,
        )["Command"]["CommandId"]

    windows = next(i for i in ec2.describe_images()["Images"] if i.get("Platform") == "windows")
    launched = ec2.run_instances(ImageId=windows["ImageId"], MinCount=1, MaxCount=1)
    win_id = launched["Instances"][0]["InstanceId"]
    inv = final(win_id, send(win_id))
    assert (inv["Status"], inv["StatusDetails"]) == ("Failed", "InvalidPlatform")
    # Sent to a stopped instance (a valid target), which is terminated before its agent takes the command.
    ec2.stop_instances(InstanceIds=[fresh_instance])
    sent = ssm.send_command(
        InstanceIds=[fresh_instance],
        DocumentName="AWS-RunShellScript",
        Parameters={"commands": ["true"], "executionTimeout": ["5"]},
        TimeoutSeconds=30,
    )["Command"]
    # The delivery deadline is TimeoutSeconds + executionTimeout, not TimeoutSeconds alone.
    assert (sent["ExpiresAfter"] - sent["RequestedDateTime"]).total_seconds() == 35
    assert standin.invocations[(sent["CommandId"], fresh_instance)].delivery_timeout == 35
    ec2.terminate_instances(InstanceIds=[fresh_instance])
    inv = final(fresh_instance, sent["CommandId"])
    assert (inv["Status"], inv["StatusDetails"], inv["ResponseCode"]) == ("Failed", "Undeliverable", -1)
    # botocore checks the range too; the service refuses it on its own.
    unchecked = boto3.client(
        "ssm", region_name=REGION, endpoint_url=ssm_server.url, config=Config(parameter_validation=False)
    )
    with pytest.raises(ClientError, match="TimeoutSeconds must be between 30"):
        unchecked.send_command(
            InstanceIds=[win_id],
            DocumentName="AWS-RunShellScript",
            Parameters={"commands": ["true"]},
            TimeoutSeconds=10,
        )


async def test_a_command_ssm_refuses_as_too_large_is_staged_instead(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    """The 64 KB document limit is AWS's to apply: when it refuses what our estimate let through, the run
    goes the staged way rather than failing."""
    data = os.urandom(100_000)
    code = "import hashlib\nprint(hashlib.sha256(open('blob.bin', 'rb').read()).hexdigest())"
    config = config_for(instance_id, tmp_base_dir, max_file_size_mb=5)
    transport = quick(config, max_command_chars=10**7)
    async with AsyncSandbox(config, transport=transport) as sandbox:
        result = await sandbox.execute_code(code, files={"blob.bin": data})
    assert result.success, result
    assert result.stdout.strip() == hashlib.sha256(data).hexdigest()
    assert standin.calls["SendCommand"] > 2  # the refused one, the chunks, the run
    assert len(standin.invocations) == standin.calls["SendCommand"] - 1


def _expiring_profile(tmp_path, monkeypatch: pytest.MonkeyPatch, seconds: int) -> str:  # type: ignore[no-untyped-def]
    """A profile whose credentials (from credential_process, as SSO or an assumed role would) expire in
    ``seconds``."""
    helper = tmp_path / "creds.py"
    helper.write_text(
        "import datetime, json\n"
        f"end = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds={seconds})\n"
        'print(json.dumps({"Version": 1, "AccessKeyId": "testing", "SecretAccessKey": "testing",'
        ' "SessionToken": "testing", "Expiration": end.isoformat()}))\n'
    )
    config = tmp_path / "aws-config"
    config.write_text(f"[profile expiring]\ncredential_process = {sys.executable} {helper}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    return "expiring"


async def test_presigned_staging_urls_live_no_longer_than_the_credentials(
    ssm_server: ssm_standin.Server,
    standin: ssm_standin.StandIn,
    instance_id: str,
    tmp_base_dir: str,
    tmp_path,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=ssm_server.url)
    s3.create_bucket(Bucket="ec2sb-expiring")
    profile = _expiring_profile(tmp_path, monkeypatch, 300)
    config = config_for(
        instance_id, tmp_base_dir, s3_bucket="ec2sb-expiring", aws_profile=profile, max_execution_time=600
    )
    data = os.urandom(200_000)
    async with AsyncSandbox(config, transport=quick(config)) as sandbox:
        result = await sandbox.execute_code(
            "print(len(open('b', 'rb').read()))", files={"b": data}, timeout=600
        )
    assert result.success and result.stdout == "200000\n", result
    (inv,) = standin.invocations.values()
    lines = inv.script.split("\n")
    opening = next(i for i, line in enumerate(lines) if line.endswith(f"<<'{ssm_transport.HEREDOC_END}'"))
    header = json.loads(base64.b64decode(lines[opening + 1]))
    query = {k: v[0] for k, v in parse_qs(urlsplit(header["url"]).query).items()}
    # Signature V4 says how long, V2 (botocore's default for S3 here) until when.
    expires = int(query["X-Amz-Expires"]) if "X-Amz-Expires" in query else int(query["Expires"]) - time.time()
    assert 200 <= expires <= 300  # not the 900 s asked for otherwise: the credentials end first
    assert "the AWS credentials expire in" in caplog.text and "within this run's" in caplog.text

    profile = _expiring_profile(tmp_path, monkeypatch, 20)
    short = config_for(instance_id, tmp_base_dir, s3_bucket="ec2sb-expiring", aws_profile=profile)
    async with AsyncSandbox(short, transport=quick(short)) as sandbox:
        result = await sandbox.execute_code("print(1)", files={"b": data})
    assert not result.success and "the AWS credentials expire in" in (result.error_message or "")
    assert "refresh the credentials" in (result.error_message or "")


# ---------------------------------------------------------------------- giving up


async def test_cancellation_sends_cancel_command(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    config = config_for(instance_id, tmp_base_dir)
    async with AsyncSandbox(config, transport=quick(config)) as sandbox:
        task = asyncio.create_task(sandbox.execute_code("import time\ntime.sleep(60)"))
        for _ in range(200):
            if any(inv.status == "InProgress" for inv in standin.invocations.values()):
                break
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert_the_command_was_cancelled(standin)


async def test_giving_up_at_the_deadline_cancels_the_command(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    transport = quick(config_for(instance_id, tmp_base_dir))
    with pytest.raises(TransportError, match="cancelled"):
        await transport._run(["sleep 30"], time.monotonic() + 1.0)
    assert_the_command_was_cancelled(standin)


# ---------------------------------------------------------------------- status


async def test_status_parts_fail_one_at_a_time(
    standin: ssm_standin.StandIn, instance_id: str, tmp_base_dir: str
) -> None:
    config = config_for(instance_id, tmp_base_dir)
    async with AsyncSandbox(config) as sandbox:
        status = await sandbox.instance_status()
        parts = {p.name: p for p in status.parts}
        assert status.healthy, status
        assert parts["instance"].details["state"] == "running"
        assert parts["instance"].details["instance_type"] == "t3.micro"
        assert parts["instance"].details["availability_zone"].startswith(REGION)
        assert parts["instance"].details["platform"]
        assert parts["ssm_agent"].details["ping_status"] == "Online"
        assert parts["ssm_agent"].details["agent_version"] == ssm_standin.AGENT_VERSION

        # 1. only the agent part fails
        standin.fail("DescribeInstanceInformation", "AccessDeniedException", "not allowed to describe")
        parts = {p.name: p for p in (await sandbox.instance_status()).parts}
        assert [n for n, p in parts.items() if not p.ok] == ["ssm_agent"]
        assert "AccessDeniedException" in parts["ssm_agent"].message

        # 2. only the probe fails
        standin.fail("SendCommand", "AccessDeniedException", "not allowed to send")
        parts = {p.name: p for p in (await sandbox.instance_status()).parts}
        assert [n for n, p in parts.items() if not p.ok] == ["probe"]
        assert "access denied" in parts["probe"].message

        # 3. only the instance part fails
        ec2_client = sandbox.transport.client("ec2")  # type: ignore[attr-defined]

        def deny(**kwargs: object) -> None:
            raise ClientError(
                {"Error": {"Code": "UnauthorizedOperation", "Message": "no ec2:DescribeInstances"}},
                "DescribeInstances",
            )

        ec2_client.meta.events.register("before-call.ec2.DescribeInstances", deny)
        try:
            parts = {p.name: p for p in (await sandbox.instance_status()).parts}
        finally:
            ec2_client.meta.events.unregister("before-call.ec2.DescribeInstances", deny)
        assert [n for n, p in parts.items() if not p.ok] == ["instance"]
        assert "UnauthorizedOperation" in parts["instance"].message


# ---------------------------------------------------------------------- the stand-in itself


def test_standin_runs_scripts_as_the_agent_does(
    ssm_server: ssm_standin.Server, standin: ssm_standin.StandIn, instance_id: str
) -> None:
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=ssm_server.url)

    def run(commands: list[str], timeout: str = "30", running: bool = False) -> dict:  # type: ignore[type-arg]
        cid = ssm.send_command(
            InstanceIds=[instance_id],
            DocumentName="AWS-RunShellScript",
            Parameters={"commands": commands, "executionTimeout": [timeout]},
        )["Command"]["CommandId"]
        if running:  # still running: no exit code, no output yet
            first = ssm.get_command_invocation(CommandId=cid, InstanceId=instance_id)
            assert first["ResponseCode"] == -1 and first["StandardOutputContent"] == ""
            assert first["Status"] in ("Pending", "InProgress")
        while True:
            inv = ssm.get_command_invocation(CommandId=cid, InstanceId=instance_id)
            if inv["Status"] not in ("Pending", "InProgress"):
                return inv
            time.sleep(0.05)

    inv = run(["echo early", "sleep 1", "pwd", "readlink /proc/$$/exe", "id -u"], running=True)
    assert inv["Status"] == "Success"
    assert inv["StandardOutputContent"].split() == ["early", "/usr/bin", "/usr/bin/dash", str(os.getuid())]
    inv = run(["#!/usr/bin/env python3", "import sys; print(sys.version_info[0]); sys.exit(4)"])
    assert inv["Status"] == "Failed" and inv["ResponseCode"] == 4 and inv["StandardOutputContent"] == "3\n"
    inv = run(["yes x | head -c 50000", "yes e | head -c 20000 >&2"])
    assert inv["StandardOutputContent"] == "x\n" * 12000 + ssm_standin.TRUNCATION_MARKER
    assert inv["StandardErrorContent"] == "e\n" * 4000 + ssm_standin.TRUNCATION_MARKER
    assert run(["exit 137"])["Status"] == "TimedOut"
    started = time.monotonic()
    inv = run(["sleep 60 &", "sleep 60"], timeout="1")
    assert inv["Status"] == "TimedOut" and inv["StatusDetails"] == "ExecutionTimedOut"
    assert inv["ResponseCode"] == 137  # the agent's CommandStoppedPreemptivelyExitCode
    assert time.monotonic() - started < 10
    with pytest.raises(ClientError, match="MaxDocumentSizeExceeded"):
        run(["# " + "x" * 70000])
    with pytest.raises(ClientError, match="InvalidInstanceId"):
        run(["true"]) if False else ssm.send_command(
            InstanceIds=["i-0123456789abcdef0"],
            DocumentName="AWS-RunShellScript",
            Parameters={"commands": ["true"]},
        )


def test_standin_serves_as_a_separate_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, **FAKE_ENV}
    env.pop("AWS_ENDPOINT_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ec2_sandbox.testing.ssm_standin", "--create-instance", REGION],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        ready = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        assert ready["url"].startswith("http://127.0.0.1:")
        ssm = boto3.client("ssm", region_name=REGION, endpoint_url=ready["url"])
        cid = ssm.send_command(
            InstanceIds=[ready["instance_id"]],
            DocumentName="AWS-RunShellScript",
            Parameters={"commands": ["echo from the server"]},
        )["Command"]["CommandId"]
        for _ in range(100):
            inv = ssm.get_command_invocation(CommandId=cid, InstanceId=ready["instance_id"])
            if inv["Status"] == "Success":
                break
            time.sleep(0.05)
        assert inv["StandardOutputContent"] == "from the server\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


# ---------------------------------------------------------------------- the CLI as a subprocess


def _cli_env(ssm_server: ssm_standin.Server) -> dict[str, str]:
    env = {**os.environ, **FAKE_ENV, "AWS_ENDPOINT_URL": ssm_server.url}
    env.pop("EC2_SANDBOX_CONFIG", None)
    return env


def _write_config(path: str, instance: str, base: str) -> str:
    with open(path, "w") as fh:
        json.dump(
            {
                "default": {
                    "transport": "ssm",
                    "instance_id": instance,
                    "region": REGION,
                    "base_sandbox_dir": base,
                }
            },
            fh,
        )
    return path


CLI = [sys.executable, "-c", "import sys; from ec2_sandbox.cli import main; sys.exit(main())"]


def test_cli_exec_runs_on_the_configured_instance(
    ssm_server: ssm_standin.Server,
    standin: ssm_standin.StandIn,
    instance_id: str,
    tmp_base_dir: str,
    tmp_path,
) -> None:  # type: ignore[no-untyped-def]
    config = _write_config(str(tmp_path / "config.json"), instance_id, tmp_base_dir)
    code = "import sys\nprint('answer', 6 * 7)\nprint('oops', file=sys.stderr)\nsys.exit(5)"
    done = subprocess.run(
        [*CLI, "--config", config, "exec", "-c", code],
        env=_cli_env(ssm_server),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 5, done.stderr
    assert done.stdout == "answer 42\n"
    assert "oops" in done.stderr
    assert standin.calls["SendCommand"] == 1
    out = subprocess.run(
        [*CLI, "--config", config, "exec", "--json", "-c", "print('json')"],
        env=_cli_env(ssm_server),
        capture_output=True,
        text=True,
        timeout=60,
    )
    result = json.loads(out.stdout)
    assert result["transport"] == "ssm" and result["stdout"] == "json\n"


def test_cli_interrupt_cancels_the_command(
    ssm_server: ssm_standin.Server,
    standin: ssm_standin.StandIn,
    instance_id: str,
    tmp_base_dir: str,
    tmp_path,
) -> None:  # type: ignore[no-untyped-def]
    config = _write_config(str(tmp_path / "config.json"), instance_id, tmp_base_dir)
    proc = subprocess.Popen(
        [*CLI, "--config", config, "exec", "-c", "import time\ntime.sleep(60)"],
        env=_cli_env(ssm_server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(300):
            if any(inv.status == "InProgress" for inv in standin.invocations.values()):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_the_command_was_cancelled(standin)


def test_cli_status_reports_instance_agent_and_probe(
    ssm_server: ssm_standin.Server,
    standin: ssm_standin.StandIn,
    fresh_instance: str,
    tmp_base_dir: str,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    config = _write_config(str(tmp_path / "config.json"), fresh_instance, tmp_base_dir)
    ok = subprocess.run(
        [*CLI, "--config", config, "status"],
        env=_cli_env(ssm_server),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"ssm -> {fresh_instance}: healthy" in ok.stdout
    assert "[ok] instance" in ok.stdout and "[ok] ssm_agent" in ok.stdout and "[ok] probe" in ok.stdout
    standin.ping_status[fresh_instance] = "ConnectionLost"
    standin.delivery_timeout = 1.0
    bad = subprocess.run(
        [*CLI, "--config", config, "status", "--json"],
        env=_cli_env(ssm_server),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr
    parts = {p["name"]: p for p in json.loads(bad.stdout)["parts"]}
    assert parts["instance"]["ok"] and not parts["ssm_agent"]["ok"] and not parts["probe"]["ok"]
    assert "ConnectionLost" in parts["ssm_agent"]["message"]
    assert "offline" in parts["probe"]["message"]
