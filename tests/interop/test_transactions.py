"""Kafka transactions (issue 17) with the Python clients: confluent-kafka transactional
producers (commit, abort, a mix across partitions, a fenced zombie, consume-transform-produce
with send_offsets_to_transaction), kafka-python read_committed and read_uncommitted consumers,
and aiokafka's transactional producer. A reader is read up to a sentinel record: records come
in offset order, so a record it should not have seen would have come before the sentinel."""

from __future__ import annotations

import asyncio
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

import helpers

TIMEOUT = 30.0


def txn_producer(bootstrap: str, transactional_id: str) -> Producer:
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id,
                  "linger.ms": 0})
    p.init_transactions(TIMEOUT)
    return p


def send(p: Producer, topic: str, partition: int, *values: str) -> None:
    errors = []
    for v in values:
        p.produce(topic, key=v, value=v, partition=partition,
                  on_delivery=lambda err, _m: errors.append(err) if err else None)
    assert p.flush(TIMEOUT) == 0
    assert not errors, errors


def read_until(bootstrap: str, topic: str, partition: int, isolation: str,
               sentinel: str) -> list[str]:
    """Values from offset 0 with confluent-kafka, up to and including `sentinel`."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": helpers.unique("txn-reader"),
                  "enable.auto.commit": False, "isolation.level": isolation})
    try:
        c.assign([TopicPartition(topic, partition, 0)])
        out: list[str] = []
        deadline = time.monotonic() + TIMEOUT
        while not out or out[-1] != sentinel:
            assert time.monotonic() < deadline, f"read so far: {out}"
            m = c.poll(0.2)
            if m is None:
                continue
            assert m.error() is None, m.error()
            out.append(m.value().decode())
        return out
    finally:
        c.close()


def kafka_python_read_until(bootstrap: str, topic: str, isolation: str,
                            sentinel: str) -> list[str]:
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation,
                      enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        c.assign([KTopicPartition(topic, 0)])
        c.seek_to_beginning()
        out: list[str] = []
        deadline = time.monotonic() + TIMEOUT
        while not out or out[-1] != sentinel:
            assert time.monotonic() < deadline, f"read so far: {out}"
            for records in c.poll(timeout_ms=200).values():
                out.extend(r.value.decode() for r in records)
        return out
    finally:
        c.close()


@pytest.mark.needs_idempotence
def test_committed_visible_aborted_invisible_across_partitions(broker, new_topic) -> None:
    topic = new_topic(partitions=2)
    p = txn_producer(broker.bootstrap, helpers.unique("txn-mixed"))
    p.begin_transaction()
    send(p, topic, 0, "c1")
    send(p, topic, 1, "c2")
    p.commit_transaction(TIMEOUT)
    p.begin_transaction()
    send(p, topic, 0, "a1", "a2")
    send(p, topic, 1, "a3")
    p.abort_transaction(TIMEOUT)
    p.begin_transaction()
    send(p, topic, 0, "c3")
    send(p, topic, 1, "c4")
    p.commit_transaction(TIMEOUT)

    assert read_until(broker.bootstrap, topic, 0, "read_committed", "c3") == ["c1", "c3"]
    assert read_until(broker.bootstrap, topic, 1, "read_committed", "c4") == ["c2", "c4"]
    assert read_until(broker.bootstrap, topic, 0, "read_uncommitted", "c3") == \
        ["c1", "a1", "a2", "c3"]


@pytest.mark.needs_idempotence
def test_kafka_python_read_committed_skips_aborted_records(broker, new_topic) -> None:
    topic = new_topic()
    p = txn_producer(broker.bootstrap, helpers.unique("txn-kp"))
    p.begin_transaction()
    send(p, topic, 0, "aborted")
    p.abort_transaction(TIMEOUT)
    p.begin_transaction()
    send(p, topic, 0, "committed")
    p.commit_transaction(TIMEOUT)
    assert kafka_python_read_until(broker.bootstrap, topic, "read_committed",
                                   "committed") == ["committed"]
    assert kafka_python_read_until(broker.bootstrap, topic, "read_uncommitted",
                                   "committed") == ["aborted", "committed"]


@pytest.mark.needs_idempotence
def test_a_zombie_producer_is_fenced(broker, new_topic) -> None:
    topic = new_topic()
    tid = helpers.unique("txn-zombie")
    zombie = txn_producer(broker.bootstrap, tid)
    zombie.begin_transaction()
    send(zombie, topic, 0, "from-zombie")
    successor = txn_producer(broker.bootstrap, tid)
    with pytest.raises(KafkaException) as fenced:
        zombie.commit_transaction(TIMEOUT)
    assert fenced.value.args[0].fatal(), fenced.value
    successor.begin_transaction()
    send(successor, topic, 0, "from-successor")
    successor.commit_transaction(TIMEOUT)
    assert read_until(broker.bootstrap, topic, 0, "read_committed", "from-successor") == \
        ["from-successor"]


@pytest.mark.needs_idempotence
def test_consume_transform_produce_is_exactly_once(broker, new_topic) -> None:
    source, sink = new_topic(), new_topic()
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(6):
        plain.produce(source, value=f"m{i}", partition=0)
    assert plain.flush(TIMEOUT) == 0
    group = helpers.unique("txn-ctp")
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "isolation.level": "read_committed"})
    p = txn_producer(broker.bootstrap, helpers.unique("txn-ctp"))
    try:
        c.subscribe([source])
        got = []
        deadline = time.monotonic() + TIMEOUT
        while len(got) < 6:
            assert time.monotonic() < deadline, got
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                got.append(m.value().decode())
        positions = [TopicPartition(source, 0, 6)]

        # A failed attempt: output and offsets both vanish.
        p.begin_transaction()
        send(p, sink, 0, "never")
        p.send_offsets_to_transaction(positions, c.consumer_group_metadata(), TIMEOUT)
        p.abort_transaction(TIMEOUT)
        assert c.committed([TopicPartition(source, 0)], TIMEOUT)[0].offset < 0

        p.begin_transaction()
        send(p, sink, 0, *[v.upper() for v in got])
        p.send_offsets_to_transaction(positions, c.consumer_group_metadata(), TIMEOUT)
        p.commit_transaction(TIMEOUT)
        assert c.committed([TopicPartition(source, 0)], TIMEOUT)[0].offset == 6
    finally:
        c.close()
    assert read_until(broker.bootstrap, sink, 0, "read_committed", "M5") == \
        [f"M{i}" for i in range(6)]


@pytest.mark.needs_idempotence
def test_aiokafka_transactional_producer(broker, new_topic) -> None:
    from aiokafka import AIOKafkaProducer

    topic = new_topic()

    async def scenario() -> None:
        p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap,
                             transactional_id=helpers.unique("txn-aio"))
        await p.start()
        try:
            async with p.transaction():
                await p.send_and_wait(topic, b"aio-committed", partition=0)
            await p.begin_transaction()
            await p.send_and_wait(topic, b"aio-aborted", partition=0)
            await p.abort_transaction()
            async with p.transaction():
                await p.send_and_wait(topic, b"aio-last", partition=0)
        finally:
            await p.stop()

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert read_until(broker.bootstrap, topic, 0, "read_committed", "aio-last") == \
        ["aio-committed", "aio-last"]
