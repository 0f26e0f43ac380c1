"""kafka-python (pure Python client) against the broker: version inference, producer and group
consumer, committed offsets with metadata, and KafkaAdminClient topic management."""

from __future__ import annotations

import threading
import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError
from kafka.structs import OffsetAndMetadata

import helpers

# Idempotence is on by default in kafka-python 3 (KIP-679). Most cases turn it off to cover the
# plain producer; test_default_idempotent_producer (needs_idempotence) covers the default.
PRODUCER_DEFAULTS = dict(enable_idempotence=False, acks="all")


def make_producer(bootstrap: str, **extra) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap, **{**PRODUCER_DEFAULTS, **extra})


def make_consumer(bootstrap: str, *topics: str, **extra) -> KafkaConsumer:
    conf = dict(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                enable_auto_commit=False)
    conf.update(extra)
    return KafkaConsumer(*topics, **conf)


def send_all(p: KafkaProducer, topic: str, records: list[dict]) -> list:
    futures = [p.send(topic, **r) for r in records]
    p.flush(timeout=30)
    return [f.get(timeout=30) for f in futures]


def poll_n(c: KafkaConsumer, n: int, timeout: float = 30.0) -> list:
    """Polls until `n` records arrived, then a little longer to catch duplicates."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"received {len(out)} of {n} records in {timeout} s"
        # A long timeout (poll returns as soon as records are there): kafka-python 3.0.12 can
        # rejoin needlessly when poll() times out just as a group join completes.
        for records in c.poll(timeout_ms=1000).values():
            out.extend(records)
    extra_deadline = time.monotonic() + 1.0
    while time.monotonic() < extra_deadline:
        for records in c.poll(timeout_ms=100).values():
            out.extend(records)
    assert len(out) == n, f"expected exactly {n} records, got {len(out)}"
    return out


def test_inferred_broker_version(broker):
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    try:
        version = c.config["api_version"]
    finally:
        c.close()
    # Produce v9 is served, and kafka-python maps Produce v9 to 2.8 (Produce v8 to 2.4); a lower
    # guess would make it fall back to old protocol versions.
    assert version >= (2, 8), version
    if broker.is_ferry:
        # With src/protocol/kafka/versions.rs as it is, the highest kafka-python probe the table
        # satisfies is DescribeAcls v3 (Kafka 3.3; answered SECURITY_DISABLED, as Kafka without
        # an authorizer); the higher probes need Fetch v15+, Produce v11 or broker-internal APIs.
        assert version == (3, 3), version
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        cluster = admin.describe_cluster()
        node = cluster["brokers"][0]["broker_id"]
        assert admin.get_broker_version_data(node).broker_version == version
        if broker.is_ferry:
            host, port = helpers.split_hostport(broker.bootstrap)
            assert [(b["host"], b["port"]) for b in cluster["brokers"]] == [(host, port)]
            assert cluster["controller_id"] == node
    finally:
        admin.close()


@pytest.mark.parametrize("compression", [None, "gzip", "snappy", "lz4", "zstd"])
def test_compression_roundtrip(broker, new_topic, compression):
    """Each codec kafka-python can write, read back by kafka-python (assigned, no group)."""
    topic = new_topic(partitions=1)
    records = [dict(key=f"k{i % 4}".encode(), value=(f"{compression}-{i} ".encode() * 30),
                    headers=[("i", str(i).encode())]) for i in range(300)]
    p = make_producer(broker.bootstrap, compression_type=compression, linger_ms=20)
    try:
        metas = send_all(p, topic, records)
    finally:
        p.close(timeout=10)
    assert [m.offset for m in metas] == list(range(len(records)))
    c = make_consumer(broker.bootstrap)
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        got = poll_n(c, len(records))
    finally:
        c.close()
    assert [r.offset for r in got] == list(range(len(records)))
    assert [(r.key, r.value, r.headers) for r in got] == \
        [(r["key"], r["value"], r["headers"]) for r in records]
    if broker.is_ferry:
        batches = helpers.stored_batches(broker.data_dir, topic, 0)
        want = helpers.COMPRESSION_CODECS[compression or "none"]
        assert {b.codec for b in batches} == {want}
        assert len(batches) < len(records), "the producer should have batched records"


def test_producer_and_group_consumer_roundtrip(broker, new_topic):
    topic = new_topic(partitions=2)
    group = helpers.unique("kp-group")
    ts0 = int(time.time() * 1000) - 10_000
    records = [dict(key=f"key-{i % 5}".encode(), value=f"value-{i}".encode() * 3,
                    headers=[("seq", str(i).encode()), ("empty", b"")],
                    timestamp_ms=ts0 + i)
               for i in range(100)]
    p = make_producer(broker.bootstrap, compression_type="gzip", linger_ms=20)
    try:
        metas = send_all(p, topic, records)
    finally:
        p.close(timeout=10)
    key_partition = {}
    for r, m in zip(records, metas):
        assert m.topic == topic and m.offset >= 0
        assert key_partition.setdefault(r["key"], m.partition) == m.partition

    c = make_consumer(broker.bootstrap, topic, group_id=group)
    try:
        got = poll_n(c, len(records))
        seen = {}
        last = {}
        for rec in got:
            seq = int(dict(rec.headers)["seq"])
            assert seq not in seen, f"record {seq} delivered twice"
            seen[seq] = rec
            sent = records[seq]
            assert rec.key == sent["key"] and rec.value == sent["value"]
            assert [(k, v) for k, v in rec.headers] == sent["headers"]
            assert rec.timestamp == sent["timestamp_ms"] and rec.timestamp_type == 0
            assert rec.partition == key_partition[rec.key]
            assert last.get(rec.key, -1) < seq, "per-key order broken"
            last[rec.key] = seq
        assert sorted(seen) == list(range(len(records)))

        # Commit what was consumed; OffsetFetch returns the ends of both partitions.
        c.commit()
        ends = c.end_offsets([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        assert sum(ends.values()) == len(records)
        for tp, end in ends.items():
            assert c.committed(tp) == end, (tp, c.committed(tp), end)
    finally:
        c.close()

    # A new member of the group starts after the commit: it gets exactly the records produced
    # since, nothing from before.
    p = make_producer(broker.bootstrap)
    try:
        send_all(p, topic, [dict(key=b"late", value=f"late-{i}".encode()) for i in range(5)])
    finally:
        p.close(timeout=10)
    c2 = make_consumer(broker.bootstrap, topic, group_id=group)
    try:
        late = poll_n(c2, 5)
    finally:
        c2.close()
    assert [r.value for r in late] == [f"late-{i}".encode() for i in range(5)]


def test_commit_with_metadata_and_fetch(broker, new_topic):
    topic = new_topic(partitions=1)
    group = helpers.unique("kp-offsets")
    p = make_producer(broker.bootstrap)
    try:
        send_all(p, topic, [dict(value=f"m{i}".encode()) for i in range(20)])
    finally:
        p.close(timeout=10)
    tp = TopicPartition(topic, 0)
    c = make_consumer(broker.bootstrap, topic, group_id=group)
    try:
        got = poll_n(c, 20)
        assert [r.offset for r in got] == list(range(20))
        c.commit({tp: OffsetAndMetadata(7, "checkpoint-7", -1)})
        assert c.committed(tp) == 7
        committed = c.committed(tp, metadata=True)
        assert committed.offset == 7 and committed.metadata == "checkpoint-7"
    finally:
        c.close()

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        offsets = admin.list_group_offsets({group: None})[group]
        assert {k: (v.offset, v.metadata) for k, v in offsets.items()} == \
            {tp: (7, "checkpoint-7")}
        listed = {g["group_id"]: g for g in admin.list_groups()}
        assert listed[group]["protocol_type"] == "consumer", listed[group]
        described = admin.describe_groups([group])[group]
        assert described["error"] is None and described["group_state"] == "Empty", described
        assert described["members"] == []
    finally:
        admin.close()

    # The next member resumes at offset 7.
    c2 = make_consumer(broker.bootstrap, topic, group_id=group)
    try:
        rest = poll_n(c2, 13)
        assert [r.offset for r in rest] == list(range(7, 20))
    finally:
        c2.close()


def test_admin_create_list_delete_topics(broker):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    name = helpers.unique("kp-admin")
    try:
        admin.create_topics({name: dict(num_partitions=3, replication_factor=1,
                                        configs={"retention.ms": "7200000"})},
                            timeout_ms=15000, wait_for_metadata=True)
        assert name in admin.list_topics()
        (described,) = admin.describe_topics([name])
        assert described["error_code"] == 0
        assert sorted(p["partition_index"] for p in described["partitions"]) == [0, 1, 2]

        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topics({name: dict(num_partitions=1, replication_factor=1)},
                                timeout_ms=15000)

        admin.delete_topics([name], timeout_ms=15000)
        helpers.wait_for("the topic to leave list_topics", lambda: name not in admin.list_topics())
        with pytest.raises(UnknownTopicOrPartitionError):
            admin.delete_topics([name], timeout_ms=15000)
    finally:
        if name in admin.list_topics():
            admin.delete_topics([name], timeout_ms=15000)
        admin.close()


@pytest.mark.needs_idempotence
def test_default_idempotent_producer(broker, new_topic):
    """kafka-python's defaults (idempotence on, acks=all)."""
    topic = new_topic(partitions=1)
    p = KafkaProducer(bootstrap_servers=broker.bootstrap)
    try:
        metas = send_all(p, topic, [dict(value=f"i{i}".encode()) for i in range(50)])
    finally:
        p.close(timeout=10)
    assert [m.offset for m in metas] == list(range(50))
    c = make_consumer(broker.bootstrap)
    try:
        c.assign([TopicPartition(topic, 0)])
        c.seek_to_beginning()
        got = poll_n(c, 50)
    finally:
        c.close()
    assert [r.value for r in got] == [f"i{i}".encode() for i in range(50)]
    if broker.is_ferry:
        batches = helpers.stored_batches(broker.data_dir, topic, 0)
        assert len({(b.producer_id, b.producer_epoch) for b in batches}) == 1
        assert batches[0].producer_id >= 0 and batches[0].base_sequence == 0


def test_two_members_split_partitions(broker, new_topic):
    """Two kafka-python members of one group (kafka-python's own assignor) split a 4-partition
    topic and receive every record exactly once between them."""
    topic = new_topic(partitions=4)
    group = helpers.unique("kp-two")
    members = [make_consumer(broker.bootstrap, topic, group_id=group, session_timeout_ms=10000,
                             heartbeat_interval_ms=1000) for _ in range(2)]
    received: list[list] = [[], []]
    failures: list[BaseException] = []
    stop = threading.Event()

    # One thread per consumer, each polling with a long timeout, as kafka-python is meant to be
    # used. (Driving both from one thread with short poll timeouts makes kafka-python 3.0.12's
    # leader rejoin right after every SyncGroup, with no error from the broker: a race in its
    # join logic when poll() returns while a join is in flight.)
    def run(i: int) -> None:
        try:
            while not stop.is_set():
                for records in members[i].poll(timeout_ms=1000).values():
                    received[i].extend(records)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            failures.append(e)

    def assignments() -> list[set[int]]:
        return [{tp.partition for tp in c.assignment()} for c in members]

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(2)]
    try:
        for t in threads:
            t.start()

        def split():
            assert not failures, failures
            a, b = assignments()
            return a and b and not (a & b) and (a | b) == {0, 1, 2, 3}

        helpers.wait_for("both members to share the four partitions", split, timeout=60)
        owned = assignments()
        assert sorted(len(o) for o in owned) == [2, 2], owned
        assert received == [[], []], "nothing was produced yet"

        p = make_producer(broker.bootstrap)
        try:
            send_all(p, topic, [dict(value=f"r{i}".encode(), partition=i % 4)
                                for i in range(200)])
        finally:
            p.close(timeout=10)
        helpers.wait_for("all records", lambda: not failures and
                         sum(map(len, received)) >= 200, timeout=30)
        time.sleep(1.0)  # anything more would be a duplicate
        assert not failures, failures
        assert assignments() == owned, "the group rebalanced while consuming"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        for c in members:
            c.close()
    values = [r.value for rs in received for r in rs]
    assert len(values) == 200 and sorted(values) == sorted(f"r{i}".encode() for i in range(200))
    for i, rs in enumerate(received):
        assert rs and {r.partition for r in rs} <= owned[i]
