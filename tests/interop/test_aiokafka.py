"""aiokafka (asyncio client) against the broker: async producer, group consumer, commits."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

import helpers


async def get_n(c: AIOKafkaConsumer, n: int, timeout: float = 30.0) -> list:
    """Fetches until `n` records arrived, then a little longer to catch duplicates."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"received {len(out)} of {n} records in {timeout} s"
        for records in (await c.getmany(timeout_ms=200)).values():
            out.extend(records)
    extra_deadline = time.monotonic() + 1.0
    while time.monotonic() < extra_deadline:
        for records in (await c.getmany(timeout_ms=100)).values():
            out.extend(records)
    assert len(out) == n, f"expected exactly {n} records, got {len(out)}"
    return out


@pytest.mark.parametrize("compression", [None, "gzip", "snappy", "lz4", "zstd"])
def test_async_compression_roundtrip(broker, new_topic, compression):
    """Each codec aiokafka can write, read back by aiokafka (assigned, no group)."""
    topic = new_topic(partitions=1)
    values = [f"{compression}-{i} ".encode() * 30 for i in range(300)]

    async def scenario():
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                                    enable_idempotence=False, compression_type=compression,
                                    linger_ms=20)
        await producer.start()
        try:
            futures = [await producer.send(topic, value=v, key=b"k") for v in values]
            metas = await asyncio.gather(*futures)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, 0)])
            got = await get_n(consumer, len(values))
        finally:
            await consumer.stop()
        return metas, got

    metas, got = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert [m.offset for m in metas] == list(range(len(values)))
    assert [(r.offset, r.key, r.value) for r in got] == \
        [(i, b"k", v) for i, v in enumerate(values)]
    if broker.is_ferry:
        batches = helpers.stored_batches(broker.data_dir, topic, 0)
        want = helpers.COMPRESSION_CODECS[compression or "none"]
        assert {b.codec for b in batches} == {want}
        assert len(batches) < len(values), "the producer should have batched records"


def test_async_roundtrip_in_group(broker, new_topic):
    compression = "gzip"
    topic = new_topic(partitions=3)
    group = helpers.unique("aio-group")
    keys = [f"k{i}".encode() for i in range(4)]

    async def scenario():
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                                    enable_idempotence=False, compression_type=compression,
                                    linger_ms=10)
        await producer.start()
        try:
            # Many sends in flight at once, then wait for all of them.
            futures = [await producer.send(topic, key=keys[i % 4], value=f"v{i}".encode(),
                                           headers=[("seq", str(i).encode())])
                       for i in range(200)]
            metas = await asyncio.gather(*futures)
        finally:
            await producer.stop()
        key_partition = {}
        for i, m in enumerate(metas):
            assert m.topic == topic and m.offset >= 0
            assert key_partition.setdefault(keys[i % 4], m.partition) == m.partition

        consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            got = await get_n(consumer, 200)
            assert consumer.assignment() == {TopicPartition(topic, p) for p in range(3)}
            seqs = [int(dict(r.headers)["seq"]) for r in got]
            assert sorted(seqs) == list(range(200))
            last = {}
            for r, seq in zip(got, seqs):
                assert r.key == keys[seq % 4] and r.value == f"v{seq}".encode()
                assert r.partition == key_partition[r.key]
                assert last.get(r.key, -1) < seq, "per-key order broken"
                last[r.key] = seq
            # Commit everything but the last 5 records of the fullest partition.
            ends = {p: 1 + max((r.offset for r in got if r.partition == p), default=-1)
                    for p in range(3)}
            back = max(ends, key=ends.get)
            offsets = {TopicPartition(topic, p): end for p, end in ends.items()}
            offsets[TopicPartition(topic, back)] = ends[back] - 5
            await consumer.commit(offsets)
            for tp, off in offsets.items():
                assert await consumer.committed(tp) == off
        finally:
            await consumer.stop()

        consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            rest = await get_n(consumer, 5)
        finally:
            await consumer.stop()
        return back, ends[back], rest

    back, end, rest = asyncio.run(asyncio.wait_for(scenario(), timeout=90))
    assert [(r.partition, r.offset) for r in rest] == [(back, o) for o in range(end - 5, end)]


@pytest.mark.needs_idempotence
def test_async_idempotent_producer(broker, new_topic):
    topic = new_topic(partitions=1)

    async def scenario():
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap,
                                    enable_idempotence=True, linger_ms=5)
        await producer.start()
        try:
            futures = [await producer.send(topic, value=f"i{i}".encode()) for i in range(100)]
            metas = await asyncio.gather(*futures)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, 0)])
            got = await get_n(consumer, 100)
        finally:
            await consumer.stop()
        return metas, got

    metas, got = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert [m.offset for m in metas] == list(range(100))
    assert [r.value for r in got] == [f"i{i}".encode() for i in range(100)]
    if broker.is_ferry:
        batches = helpers.stored_batches(broker.data_dir, topic, 0)
        assert len({(b.producer_id, b.producer_epoch) for b in batches}) == 1
        assert batches[0].producer_id >= 0
        assert [b.base_sequence for b in batches] == \
            [sum(x.record_count for x in batches[:i]) for i in range(len(batches))]
