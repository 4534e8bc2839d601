"""A tiny append-only log that must survive crashes: records are length-prefixed and
only acknowledged after ``sync``. The run writes, crashes mid-way (unsynced bytes are
lost), restarts, and checks every acknowledged record is still there.
"""

from __future__ import annotations

from commonware_runtime.interfaces import Blob, Context

PARTITION = "log"
BLOB = b"segment-0"


async def append_records(context: Context, count: int) -> list[bytes]:
    blob, size = await context.open(PARTITION, BLOB)
    acknowledged = []
    offset = size
    for i in range(count):
        record = context.rng.randbytes(context.rng.randint(1, 32))
        frame = len(record).to_bytes(2, "big") + record
        await blob.write_at(frame, offset)
        offset += len(frame)
        if context.rng.random() < 0.5:
            await blob.sync()
            acknowledged = await replay(blob, offset)
    return acknowledged


async def replay(blob: Blob, size: int) -> list[bytes]:
    records, offset = [], 0
    while offset + 2 <= size:
        length = int.from_bytes(await blob.read_at(2, offset), "big")
        if offset + 2 + length > size:
            break
        records.append(await blob.read_at(length, offset + 2))
        offset += 2 + length
    return records


async def recover(context: Context) -> list[bytes]:
    blob, size = await context.open(PARTITION, BLOB)
    return await replay(blob, size)


async def main(context: Context) -> list[bytes]:
    """Append records, syncing some; the run then ends in a crash."""
    return await append_records(context, 40)


async def after_crash(context: Context) -> list[bytes]:
    """After the restart: read back whatever survived."""
    return await recover(context)


def check(acknowledged: list[bytes], recovered: list[bytes]) -> None:
    assert recovered[: len(acknowledged)] == acknowledged, "an acknowledged (synced) record was lost in the crash"
