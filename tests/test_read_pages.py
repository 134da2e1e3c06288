"""Reading a file in pages, several in flight: byte-exact whatever order pages finish in and however short."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import zlib

import pytest

from ec2_sandbox.errors import TransportError
from ec2_sandbox.protocol import page_data, read_pages


class Source:
    """A file behind a channel that answers out of order, short, and records what was in flight."""

    def __init__(self, data: bytes, carry: int, seed: int) -> None:
        self.data = data
        self.carry = carry
        self.rng = random.Random(seed)
        self.in_flight = 0
        self.peak = 0
        self.asked: list[tuple[int, int]] = []

    async def fetch(self, position: int, length: int) -> tuple[bytes, int]:
        self.asked.append((position, length))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.rng.uniform(0, 0.01))
            # The channel carries at most `carry` bytes, sometimes less (a short read).
            n = min(length, self.carry, self.rng.randint(1, self.carry))
            return self.data[position : position + n], len(self.data)
        finally:
            self.in_flight -= 1


@pytest.mark.parametrize("seed", range(8))
async def test_pages_reassemble_byte_exact_in_any_order(seed: int) -> None:
    data = os.urandom(random.Random(seed).randint(50_000, 400_000))
    source = Source(data, carry=7000, seed=seed)
    out = bytearray()
    written, size = await read_pages(
        source.fetch, 0, 1 << 62, first_page=5000, min_page=1, max_page=20_000, window=6, sink=out.extend
    )
    assert bytes(out) == data and written == size == len(data)
    assert 1 < source.peak <= 6


async def test_offset_and_length_are_kept() -> None:
    data = os.urandom(100_000)
    source = Source(data, carry=3000, seed=1)
    out = bytearray()
    written, size = await read_pages(
        source.fetch, 12_345, 50_000, first_page=4000, min_page=1, max_page=8000, window=4, sink=out.extend
    )
    assert bytes(out) == data[12_345 : 12_345 + 50_000] and written == 50_000 and size == 100_000
    assert all(position + length <= 12_345 + 50_000 for position, length in source.asked)


async def test_memory_stays_bounded_behind_a_slow_first_page() -> None:
    """A page that takes long does not let the others run ahead without limit."""
    data = os.urandom(2_000_000)
    held_most = 0
    out = bytearray()

    async def fetch(position: int, length: int) -> tuple[bytes, int]:
        await asyncio.sleep(0.2 if position == 10_000 else 0.001)
        return data[position : position + min(length, 10_000)], len(data)

    def sink(chunk: bytes) -> None:
        out.extend(chunk)

    task = asyncio.ensure_future(
        read_pages(
            fetch, 0, 1 << 62, first_page=10_000, min_page=10_000, max_page=10_000, window=4, sink=sink
        )
    )
    while not task.done():
        held_most = max(held_most, len(asyncio.all_tasks()))
        await asyncio.sleep(0.005)
    await task
    assert bytes(out) == data
    assert held_most <= 4 + 2  # the reader, its fetches and this test


async def test_a_failing_page_fails_the_read_and_cancels_the_rest() -> None:
    data = os.urandom(200_000)
    cancelled = 0

    async def fetch(position: int, length: int) -> tuple[bytes, int]:
        nonlocal cancelled
        try:
            if position == 30_000:
                raise TransportError("page lost")
            await asyncio.sleep(0.05 if position else 0)
            return data[position : position + min(length, 10_000)], len(data)
        except asyncio.CancelledError:
            cancelled += 1
            raise

    with pytest.raises(TransportError, match="page lost"):
        await read_pages(
            fetch,
            0,
            1 << 62,
            first_page=10_000,
            min_page=10_000,
            max_page=10_000,
            window=5,
            sink=lambda _: None,
        )
    assert cancelled >= 1


async def test_a_file_that_ends_sooner_than_it_said() -> None:
    data = os.urandom(30_000)

    async def fetch(position: int, length: int) -> tuple[bytes, int]:
        return data[position : position + min(length, 5000)], 100_000  # claims more than it has

    out = bytearray()
    written, _ = await read_pages(
        fetch, 0, 1 << 62, first_page=5000, min_page=5000, max_page=5000, window=4, sink=out.extend
    )
    assert bytes(out) == data and written == len(data)


def test_compressed_pages_unpack_to_exactly_what_they_claim() -> None:
    raw = b"abc" * 10_000
    packed = base64.b64encode(zlib.compress(raw)).decode()
    assert page_data({"z": packed, "zlen": len(raw)}) == raw
    assert page_data({"b64": base64.b64encode(b"xy").decode()}) == b"xy"
    for wrong in (len(raw) - 1, len(raw) + 1, -1, 1 << 40):
        with pytest.raises(TransportError):
            page_data({"z": packed, "zlen": wrong})
