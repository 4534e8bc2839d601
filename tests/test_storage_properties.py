"""Property tests: both storages behave like a plain bytearray under any sequence of
writes, resizes, reads and syncs, and the simulated one loses exactly the unsynced
suffix of history on a crash."""

from __future__ import annotations

import tempfile
from typing import Any

from commonware_runtime import BlobInsufficientLength, deterministic, production
from hypothesis import HealthCheck, given, settings, strategies as st

write = st.tuples(st.just("write"), st.integers(0, 300), st.binary(min_size=0, max_size=64))
resize = st.tuples(st.just("resize"), st.integers(0, 400), st.just(b""))
read = st.tuples(st.just("read"), st.integers(0, 400), st.integers(0, 64).map(lambda n: bytes(n)))
sync = st.tuples(st.just("sync"), st.just(0), st.just(b""))
operations = st.lists(st.one_of(write, resize, read, sync), max_size=40)


def model_apply(model: bytearray, op: str, offset: int, data: bytes) -> None:
    """What a write or resize does to a plain bytearray (gaps and growth are zeros)."""
    if op == "write" and data:
        if len(model) < offset:
            model.extend(bytes(offset - len(model)))
        model[offset : offset + len(data)] = data
    elif op == "resize":
        del model[offset:]
        model.extend(bytes(offset - len(model)))


async def apply(context: Any, ops: list[tuple[str, int, bytes]]) -> tuple[bytes, bytes]:
    """Run ``ops`` on a blob and on a bytearray model; return (blob contents, synced model)."""
    blob, size = await context.open("prop", b"blob")
    assert size == 0
    model = bytearray()
    synced = b""
    for op, offset, data in ops:
        if op == "write":
            await blob.write_at(data, offset)
            model_apply(model, op, offset, data)
        elif op == "resize":
            await blob.resize(offset)
            model_apply(model, op, offset, data)
        elif op == "read":
            n = len(data)
            if offset + n > len(model):
                try:
                    await blob.read_at(n, offset)
                except BlobInsufficientLength:
                    continue
                raise AssertionError(f"read of {n} at {offset} past size {len(model)} succeeded")
            assert await blob.read_at(n, offset) == bytes(model[offset : offset + n])
        else:
            await blob.sync()
            synced = bytes(model)
        assert blob.size == len(model)
    contents = await blob.read_at(len(model), 0) if model else b""
    assert contents == bytes(model)
    await blob.sync()
    return contents, synced


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, seed=st.integers(0, 2**32))
def test_simulated_blob_matches_a_bytearray(ops: list[tuple[str, int, bytes]], seed: int) -> None:
    deterministic.Runner.seeded(seed).start(lambda ctx: apply(ctx, ops))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations)
def test_production_blob_matches_a_bytearray(ops: list[tuple[str, int, bytes]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        production.Runner(production.Config(storage_directory=directory)).start(lambda ctx: apply(ctx, ops))


@settings(max_examples=60, deadline=None)
@given(ops=operations, seed=st.integers(0, 2**32))
def test_crash_keeps_exactly_what_was_synced(ops: list[tuple[str, int, bytes]], seed: int) -> None:
    async def without_final_sync(context: Any) -> bytes:
        blob, _ = await context.open("prop", b"blob")
        synced = b""
        model = bytearray()
        for op, offset, data in ops:
            if op == "write" and data:
                await blob.write_at(data, offset)
            elif op == "resize":
                await blob.resize(offset)
            model_apply(model, op, offset, data)
            if op == "sync":
                await blob.sync()
                synced = bytes(model)
        return synced

    async def recovered(context: Any) -> bytes:
        blob, size = await context.open("prop", b"blob")
        return await blob.read_at(size, 0) if size else b""

    synced, checkpoint = deterministic.Runner.seeded(seed).start_and_recover(without_final_sync)
    assert deterministic.Runner.from_checkpoint(checkpoint).start(recovered) == synced
