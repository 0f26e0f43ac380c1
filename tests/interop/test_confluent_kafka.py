"""confluent-kafka (librdkafka) against the broker: produce/consume with every compression codec,
consumer groups, committed offsets, and the AdminClient."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
)

import helpers

# Most cases use the plain producer (idempotence off, librdkafka's default, said explicitly);
# the needs_idempotence cases cover the idempotent one once the broker serves InitProducerId.
PRODUCER_DEFAULTS = {"enable.idempotence": False, "acks": "all"}
CONSUMER_DEFAULTS = {"auto.offset.reset": "earliest", "enable.partition.eof": False}


def producer(bootstrap: str, **extra) -> Producer:
    conf = {"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS}
    conf.update({k.replace("_", "."): v for k, v in extra.items()})
    return Producer(conf)


def consumer(bootstrap: str, group: str, **extra) -> Consumer:
    conf = {"bootstrap.servers": bootstrap, "group.id": group, **CONSUMER_DEFAULTS}
    conf.update({k.replace("_", "."): v for k, v in extra.items()})
    return Consumer(conf)


def produce_all(p: Producer, records: list[dict]) -> list:
    """Produces every record, flushes, and returns the delivered messages in delivery order;
    fails on any delivery error."""
    delivered, errors = [], []

    def on_delivery(err, msg):
        (errors if err is not None else delivered).append(err if err is not None else msg)

    for r in records:
        p.produce(on_delivery=on_delivery, **r)
        p.poll(0)
    remaining = p.flush(30)
    assert remaining == 0, f"{remaining} messages still undelivered after 30 s"
    assert not errors, f"delivery errors: {errors[:5]}"
    assert len(delivered) == len(records)
    return delivered


def assign_from_beginning(c: Consumer, topic: str) -> None:
    """Reads every partition of `topic` from offset 0 without joining a group (cases about
    records rather than groups use this: a group join waits out the initial rebalance delay)."""
    partitions = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(partitions)])


def consume_n(c: Consumer, n: int, timeout: float = 30.0) -> list:
    """Polls until `n` messages arrived (failing on consumer errors), then polls a little longer
    to make sure nothing beyond them (a duplicate) arrives."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"received {len(out)} of {n} messages in {timeout} s"
        msg = c.poll(0.2)
        if msg is None:
            continue
        assert msg.error() is None, f"consumer error: {msg.error()}"
        out.append(msg)
    extra_deadline = time.monotonic() + 1.0
    while time.monotonic() < extra_deadline:
        msg = c.poll(0.1)
        if msg is not None:
            assert msg.error() is None, f"consumer error: {msg.error()}"
            out.append(msg)
    assert len(out) == n, f"expected exactly {n} messages, got {len(out)}"
    return out


# --- produce / consume ---------------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_roundtrip_compression_keys_headers_order(broker, new_topic, compression):
    topic = new_topic(partitions=3)
    keys = [f"key-{k}".encode() for k in range(6)]
    base_ts = int(time.time() * 1000) - 60_000
    records = []
    for i in range(600):
        key = keys[i % len(keys)]
        records.append(dict(
            topic=topic,
            key=key,
            # Repetitive values so every codec really shrinks them; one in ten is empty.
            value=b"" if i % 10 == 9 else (f"value {i} ".encode() * 20),
            headers=[("seq", str(i).encode()), ("codec", compression.encode()),
                     ("dup", b"first"), ("dup", b"second"), ("nil", None)],
            timestamp=base_ts + i,
        ))
    p = producer(broker.bootstrap, compression_type=compression, linger_ms=50,
                 batch_num_messages=100)
    delivered = produce_all(p, records)
    key_partition = {}
    for m in delivered:
        # One key always lands on one partition, and the broker assigned real offsets.
        assert key_partition.setdefault(m.key(), m.partition()) == m.partition()
        assert m.offset() >= 0
    assert len(set(key_partition.values())) >= 2, "keys should spread over partitions"

    c = consumer(broker.bootstrap, helpers.unique("g-compression"))
    try:
        assign_from_beginning(c, topic)
        got = consume_n(c, len(records))
    finally:
        c.close()

    by_seq = {}
    last_seq_for_key: dict[bytes, int] = {}
    for m in got:
        headers = m.headers()
        assert headers is not None, "headers were lost"
        seq = int(dict(headers)["seq"])
        assert seq not in by_seq, f"record {seq} delivered twice"
        by_seq[seq] = m
        sent = records[seq]
        assert m.key() == sent["key"]
        assert m.value() == sent["value"]
        # Header order, duplicate names and null values survive unchanged.
        assert headers == [(k, v) for k, v in sent["headers"]], headers
        assert m.timestamp() == (TIMESTAMP_CREATE_TIME, sent["timestamp"])
        assert m.partition() == key_partition[m.key()]
        # Per-key order: within a key, sequence numbers only go up.
        assert last_seq_for_key.get(m.key(), -1) < seq, f"key {m.key()!r} out of order"
        last_seq_for_key[m.key()] = seq
    assert sorted(by_seq) == list(range(len(records)))

    if broker.is_ferry:
        # The batches are stored as the producer compressed them (the codec is in the batch
        # attributes), so the test really covered the codec.
        want = helpers.COMPRESSION_CODECS[compression]
        batches = [b for p in range(3)
                   for b in helpers.stored_batches(broker.data_dir, topic, p)]
        assert sum(b.record_count for b in batches) == len(records)
        codecs = {b.codec for b in batches}
        assert {b.producer_id for b in batches} == {-1}, "idempotence was off"
        assert codecs == {want}, f"stored batches use codecs {codecs}, expected {want}"
        assert len(batches) < len(records), "the producer should have batched records"


def test_large_and_binary_values(broker, new_topic):
    topic = new_topic(partitions=1)
    values = [bytes(range(256)) * 4, b"\x00" * 10, bytes(300_000), b"\xff\xfe" * 1000]
    records = [dict(topic=topic, key=None if i == 0 else bytes([i, 0, 255]), value=v)
               for i, v in enumerate(values)]
    produce_all(producer(broker.bootstrap, compression_type="lz4"), records)
    c = consumer(broker.bootstrap, helpers.unique("g-binary"))
    try:
        assign_from_beginning(c, topic)
        got = consume_n(c, len(records))
    finally:
        c.close()
    assert [m.offset() for m in got] == [0, 1, 2, 3]
    assert [m.value() for m in got] == values
    assert got[0].key() is None
    assert [m.key() for m in got[1:]] == [bytes([i, 0, 255]) for i in (1, 2, 3)]


@pytest.mark.parametrize("acks", [0, 1])
def test_acks_zero_and_one(broker, new_topic, acks):
    topic = new_topic(partitions=2)
    records = [dict(topic=topic, key=f"k{i % 3}".encode(), value=f"a{acks}-{i}".encode())
               for i in range(200)]
    delivered = produce_all(producer(broker.bootstrap, acks=acks, linger_ms=5), records)
    if acks == 1:
        assert all(m.offset() >= 0 for m in delivered)
    c = consumer(broker.bootstrap, helpers.unique("g-acks"))
    try:
        assign_from_beginning(c, topic)
        got = consume_n(c, len(records))
    finally:
        c.close()
    assert sorted(m.value() for m in got) == sorted(r["value"] for r in records)


def test_small_fetch_limits_still_make_progress(broker, new_topic):
    """Batches larger than max.partition.fetch.bytes / fetch.max.bytes are still returned whole
    (one per fetch, KIP-74), so the consumer never stalls."""
    topic = new_topic(partitions=1)
    values = [bytes([i]) * 20_000 for i in range(30)]
    produce_all(producer(broker.bootstrap, linger_ms=20, batch_size=100_000),
                [dict(topic=topic, value=v) for v in values])
    c = consumer(broker.bootstrap, helpers.unique("g-small-fetch"),
                 max_partition_fetch_bytes=1024, fetch_max_bytes=2048, message_max_bytes=1024)
    try:
        assign_from_beginning(c, topic)
        got = consume_n(c, len(values))
    finally:
        c.close()
    assert [m.offset() for m in got] == list(range(len(values)))
    assert [m.value() for m in got] == values


def test_record_larger_than_topic_max_message_bytes_is_refused(broker, new_topic):
    topic = new_topic(partitions=1, config={"max.message.bytes": "10000"})
    p = producer(broker.bootstrap, retries=0)
    errors, ok = [], []

    def on_delivery(err, msg):
        (errors if err is not None else ok).append(err if err is not None else msg)

    p.produce(topic, value=b"s" * 100, on_delivery=on_delivery)
    p.flush(30)
    p.produce(topic, value=bytes(50_000), on_delivery=on_delivery)
    assert p.flush(30) == 0
    assert len(ok) == 1 and ok[0].offset() == 0
    assert len(errors) == 1
    assert errors[0].code() == KafkaError.MSG_SIZE_TOO_LARGE, errors[0]
    # The partition is still writable afterwards.
    produce_all(p, [dict(topic=topic, value=b"after")])
    c = consumer(broker.bootstrap, helpers.unique("g-too-large"))
    try:
        assign_from_beginning(c, topic)
        got = consume_n(c, 2)
    finally:
        c.close()
    assert [m.value() for m in got] == [b"s" * 100, b"after"]


def test_watermarks_and_offsets_for_times(broker, new_topic):
    topic = new_topic(partitions=1)
    base = int(time.time() * 1000) - 3_600_000
    # Three batches of 10 records; batch b has timestamps base + b*1000 + 0..9.
    p = producer(broker.bootstrap)
    for batch in range(3):
        produce_all(p, [dict(topic=topic, value=f"{batch}-{i}".encode(),
                             timestamp=base + batch * 1000 + i) for i in range(10)])
    c = consumer(broker.bootstrap, helpers.unique("g-times"))
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
        assert (low, high) == (0, 30)
        found = c.offsets_for_times([TopicPartition(topic, 0, base + 1000)], timeout=10)
        assert found[0].error is None and found[0].offset == 10
        found = c.offsets_for_times([TopicPartition(topic, 0, base + 1005)], timeout=10)
        assert found[0].offset == 15
        found = c.offsets_for_times([TopicPartition(topic, 0, base)], timeout=10)
        assert found[0].offset == 0
        found = c.offsets_for_times([TopicPartition(topic, 0, base + 10_000)], timeout=10)
        assert found[0].offset == -1, "no record at or after that time: end (-1)"
        # Start reading at a time, by assigning the offset found for it.
        start = c.offsets_for_times([TopicPartition(topic, 0, base + 2003)], timeout=10)
        c.assign(start)
        got = consume_n(c, 7)
        assert [m.value() for m in got] == [f"2-{i}".encode() for i in range(3, 10)]
    finally:
        c.close()


def test_log_append_time_topic(broker, new_topic):
    topic = new_topic(partitions=1, config={"message.timestamp.type": "LogAppendTime"})
    old = int(time.time() * 1000) - 86_400_000
    before = int(time.time() * 1000)
    produce_all(producer(broker.bootstrap, compression_type="lz4"),
                [dict(topic=topic, value=f"m{i}".encode(), timestamp=old) for i in range(5)])
    after = int(time.time() * 1000)
    c = consumer(broker.bootstrap, helpers.unique("g-lat"))
    try:
        assign_from_beginning(c, topic)
        got = consume_n(c, 5)
    finally:
        c.close()
    for m in got:
        kind, ts = m.timestamp()
        assert kind == TIMESTAMP_LOG_APPEND_TIME, m.timestamp()
        assert before - 1000 <= ts <= after + 1000, (ts, before, after)


def test_produce_to_unknown_topic_auto_creates_it(broker, admin):
    if not broker.is_ferry:
        pytest.skip("depends on the broker's auto-create setting")
    topic = helpers.unique("auto-created")
    try:
        delivered = produce_all(producer(broker.bootstrap),
                                [dict(topic=topic, value=b"first")])
        assert delivered[0].offset() == 0
        md = admin.list_topics(topic=topic, timeout=10)
        assert list(md.topics[topic].partitions) == [0]
    finally:
        helpers.delete_topics(admin, [topic])


def test_fetch_long_poll_wakes_on_append(broker, new_topic):
    """An idle consumer's Fetch waits on the broker (no busy loop) and returns as soon as a
    record is appended, not when fetch.wait.max.ms runs out."""
    topic = new_topic(partitions=1)
    c = consumer(broker.bootstrap, helpers.unique("g-long-poll"), fetch_wait_max_ms=5000)
    p = producer(broker.bootstrap)
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            assert c.poll(0.1) is None
        if broker.is_ferry:
            before = fetch_requests(broker)
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                assert c.poll(0.1) is None
            # librdkafka keeps one Fetch outstanding; the broker holds it for up to 5 s.
            assert fetch_requests(broker) - before <= 3, "idle Fetch requests are not held"
        for i in range(3):
            started = time.monotonic()
            produce_all(p, [dict(topic=topic, value=f"wake-{i}".encode())])
            while True:
                assert time.monotonic() - started < 1.5, "Fetch did not return on append"
                m = c.poll(0.01)
                if m is not None:
                    assert m.error() is None, m.error()
                    assert m.value() == f"wake-{i}".encode()
                    break
            time.sleep(0.5)
    finally:
        c.close()


def fetch_requests(broker) -> int:
    """Ferry's count of answered Fetch requests, from /metrics."""
    import re
    import urllib.request

    with urllib.request.urlopen(f"{broker.http}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r'^ferry_kafka_request_seconds_count\{api="Fetch"\} (\d+)$', text, re.M)
    return int(m.group(1)) if m else 0


# --- consumer groups ----------------------------------------------------------------------------

@pytest.mark.parametrize("assignor", ["range", "cooperative-sticky"])
def test_group_two_consumers_share_four_partitions(broker, new_topic, assignor):
    """Two members split a 4-partition topic and together receive every record exactly once;
    when one leaves (committing on close), the other takes over its partitions and continues
    after the commit, still without a duplicate."""
    topic = new_topic(partitions=4)
    group = helpers.unique("g-share")
    consumers = {name: consumer(broker.bootstrap, group, session_timeout_ms=10000,
                                partition_assignment_strategy=assignor,
                                auto_commit_interval_ms=200)
                 for name in ("a", "b")}
    received: dict[str, list] = {name: [] for name in consumers}
    closed: set[str] = set()

    def assignment(name) -> set[int]:
        return {tp.partition for tp in consumers[name].assignment()}

    def poll_all():
        for name, c in consumers.items():
            if name in closed:
                continue
            msg = c.poll(0.05)
            if msg is not None:
                assert msg.error() is None, f"consumer {name}: {msg.error()}"
                received[name].append(msg)

    def drain_until(what, total):
        helpers.wait_for(what, lambda: poll_all() or
                         sum(len(v) for v in received.values()) >= total,
                         timeout=30, interval=0)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # anything more would be a duplicate
            poll_all()

    def produce_round(tag: str):
        records = [dict(topic=topic, partition=i % 4, key=f"k{i}".encode(),
                        value=f"{tag}-{i}".encode()) for i in range(400)]
        produce_all(producer(broker.bootstrap), records)
        return records

    try:
        for c in consumers.values():
            c.subscribe([topic])

        def split():
            poll_all()
            a, b = assignment("a"), assignment("b")
            return a and b and not (a & b) and (a | b) == {0, 1, 2, 3}

        helpers.wait_for("both consumers to be assigned all four partitions between them",
                         split, timeout=60, interval=0)
        owned = {name: assignment(name) for name in consumers}
        # Each gets two partitions (every built-in assignor agrees on that here).
        assert sorted(len(p) for p in owned.values()) == [2, 2], owned
        assert not received["a"] and not received["b"], "nothing was produced yet"

        first = produce_round("first")
        drain_until("the first round to be consumed", len(first))
        assert {name: assignment(name) for name in consumers} == owned, \
            "the group rebalanced while consuming"

        values = [m.value() for msgs in received.values() for m in msgs]
        assert len(values) == len(first), f"{len(values)} deliveries for {len(first)} records"
        assert sorted(values) == sorted(r["value"] for r in first)
        for name, msgs in received.items():
            assert msgs, f"consumer {name} received nothing"
            assert {m.partition() for m in msgs} <= owned[name], \
                f"consumer {name} got records from partitions it was not assigned"
            per_partition = defaultdict(list)
            for m in msgs:
                per_partition[m.partition()].append(m.offset())
            for part, offsets in per_partition.items():
                assert offsets == list(range(100)), f"partition {part}: {offsets[:10]}..."

        # b leaves (auto-commit commits its position on close); a takes over everything.
        consumers["b"].close()
        closed.add("b")
        helpers.wait_for("a to own all four partitions",
                         lambda: poll_all() or assignment("a") == {0, 1, 2, 3},
                         timeout=60, interval=0)
        before = len(received["a"])
        second = produce_round("second")
        drain_until("the second round to be consumed", len(first) + len(second))
        late = [m.value() for m in received["a"][before:]]
        assert sorted(late) == sorted(r["value"] for r in second), \
            f"{len(late)} deliveries after the rebalance, e.g. {late[:5]}"
    finally:
        for name, c in consumers.items():
            if name not in closed:
                c.close()


def test_commit_then_new_member_resumes(broker, new_topic):
    """Consumer A reads everything of a 2-partition topic but commits explicit positions; then a
    new consumer in the same group starts exactly there."""
    topic = new_topic(partitions=2)
    group = helpers.unique("g-resume")
    records = [dict(topic=topic, partition=i % 2, value=f"p{i % 2}-{i // 2}".encode())
               for i in range(40)]
    produce_all(producer(broker.bootstrap), records)

    a = consumer(broker.bootstrap, group, enable_auto_commit=False)
    try:
        a.subscribe([topic])
        got = consume_n(a, 40)
        assert sorted(m.value() for m in got) == sorted(r["value"] for r in records)
        result = a.commit(offsets=[TopicPartition(topic, 0, 13), TopicPartition(topic, 1, 5)],
                          asynchronous=False)
        assert all(tp.error is None for tp in result), result
        committed = a.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
        assert [(tp.partition, tp.offset, tp.error) for tp in committed] == \
            [(0, 13, None), (1, 5, None)]
    finally:
        a.close()

    b = consumer(broker.bootstrap, group, enable_auto_commit=False)
    try:
        b.subscribe([topic])
        got = consume_n(b, (20 - 13) + (20 - 5))
    finally:
        b.close()
    seen = sorted((m.partition(), m.offset()) for m in got)
    assert seen == [(0, o) for o in range(13, 20)] + [(1, o) for o in range(5, 20)]


def test_commit_consumed_position_no_redelivery(broker, new_topic):
    """commit() with no arguments commits what the application consumed; the next member of the
    group continues after it, without redelivering anything."""
    topic = new_topic(partitions=1)
    group = helpers.unique("g-position")
    produce_all(producer(broker.bootstrap),
                [dict(topic=topic, value=f"m{i}".encode()) for i in range(30)])

    a = consumer(broker.bootstrap, group, enable_auto_commit=False)
    try:
        a.subscribe([topic])
        first = []
        deadline = time.monotonic() + 30
        while len(first) < 12:
            assert time.monotonic() < deadline, f"only {len(first)} messages"
            m = a.poll(0.2)
            if m is not None:
                assert m.error() is None, m.error()
                first.append(m)
        a.commit(asynchronous=False)
        assert a.committed([TopicPartition(topic, 0)], timeout=10)[0].offset == 12
    finally:
        a.close()
    assert [m.offset() for m in first] == list(range(12))

    b = consumer(broker.bootstrap, group)
    try:
        b.subscribe([topic])
        rest = consume_n(b, 18)
    finally:
        b.close()
    assert [m.offset() for m in rest] == list(range(12, 30))
    assert [m.value() for m in rest] == [f"m{i}".encode() for i in range(12, 30)]


def test_static_member_rejoins_without_rebalance_wait(broker, new_topic):
    """A static member (group.instance.id) that restarts takes its place back at once, with the
    same assignment, and resumes after its commit."""
    topic = new_topic(partitions=2)
    group = helpers.unique("g-static")
    produce_all(producer(broker.bootstrap),
                [dict(topic=topic, partition=i % 2, value=f"s{i}".encode()) for i in range(40)])

    def member():
        c = consumer(broker.bootstrap, group, group_instance_id="instance-1",
                     enable_auto_commit=False, session_timeout_ms=30000)
        c.subscribe([topic])
        return c

    a = member()
    try:
        got = consume_n(a, 40)
        assert sorted(m.value() for m in got) == sorted(f"s{i}".encode() for i in range(40))
        a.commit(offsets=[TopicPartition(topic, 0, 15), TopicPartition(topic, 1, 18)],
                 asynchronous=False)
    finally:
        a.close()  # a static member does not leave the group on close

    produce_all(producer(broker.bootstrap),
                [dict(topic=topic, partition=i % 2, value=f"t{i}".encode()) for i in range(4)])
    started = time.monotonic()
    b = member()
    try:
        got = consume_n(b, (20 - 15) + (20 - 18) + 4)
        rejoin = time.monotonic() - started
        assert {tp.partition for tp in b.assignment()} == {0, 1}
    finally:
        b.close()
    # Well under the 30 s session timeout: the broker replaced the member instead of waiting
    # for the old one to expire.
    assert rejoin < 15, f"rejoining took {rejoin:.1f} s"
    assert sorted((m.partition(), m.offset()) for m in got) == \
        [(0, o) for o in range(15, 22)] + [(1, o) for o in range(18, 22)]


def test_group_admin_list_describe_offsets_delete(broker, new_topic, admin):
    from confluent_kafka import ConsumerGroupTopicPartitions

    topic = new_topic(partitions=2)
    group = helpers.unique("g-admin")
    produce_all(producer(broker.bootstrap),
                [dict(topic=topic, partition=i % 2, value=b"x") for i in range(10)])
    c = consumer(broker.bootstrap, group, enable_auto_commit=False, client_id="interop-member")
    try:
        c.subscribe([topic])
        consume_n(c, 10)
        c.commit(offsets=[TopicPartition(topic, 0, 4), TopicPartition(topic, 1, 5)],
                 asynchronous=False)

        listed = admin.list_consumer_groups(request_timeout=10).result(timeout=15)
        assert not listed.errors, listed.errors
        assert group in {g.group_id for g in listed.valid}

        desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result(
            timeout=15)
        assert desc.group_id == group
        assert str(desc.state).endswith("STABLE"), desc.state
        assert len(desc.members) == 1
        member = desc.members[0]
        assert member.client_id == "interop-member"
        assert sorted(tp.partition for tp in member.assignment.topic_partitions) == [0, 1]

        # Deleting a group with a live member is refused.
        with pytest.raises(KafkaException) as busy:
            admin.delete_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
        assert busy.value.args[0].code() == KafkaError.NON_EMPTY_GROUP
    finally:
        c.close()

    offsets = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)], request_timeout=10)[group].result(timeout=15)
    assert sorted((tp.topic, tp.partition, tp.offset) for tp in offsets.topic_partitions) == \
        [(topic, 0, 4), (topic, 1, 5)]

    # An admin may move an empty group's offsets.
    admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 2)])],
        request_timeout=10)[group].result(timeout=15)
    offsets = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)], request_timeout=10)[group].result(timeout=15)
    assert sorted((tp.partition, tp.offset) for tp in offsets.topic_partitions) == [(0, 2), (1, 5)]

    admin.delete_consumer_groups([group], request_timeout=10)[group].result(timeout=15)

    def gone():
        listed = admin.list_consumer_groups(request_timeout=10).result(timeout=15)
        return group not in {g.group_id for g in listed.valid}
    helpers.wait_for("the deleted group to disappear from ListGroups", gone, timeout=15)
    offsets = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)], request_timeout=10)[group].result(timeout=15)
    assert all(tp.offset < 0 for tp in offsets.topic_partitions), offsets.topic_partitions


# --- admin --------------------------------------------------------------------------------------

def test_admin_create_describe_delete_topics(broker, admin):
    name = helpers.unique("admin-topics")
    other = helpers.unique("admin-topics-b")
    try:
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=3, replication_factor=1,
                      config={"retention.ms": "3600000", "max.message.bytes": "2000000"}),
             NewTopic(other, num_partitions=1, replication_factor=1)],
            request_timeout=15, operation_timeout=15)
        for f in futures.values():
            assert f.result(timeout=15) is None

        md = admin.list_topics(timeout=10)
        assert name in md.topics and other in md.topics
        assert sorted(md.topics[name].partitions) == [0, 1, 2]
        assert len(md.brokers) >= 1
        for p in md.topics[name].partitions.values():
            assert p.leader in md.brokers
            assert p.error is None

        # Creating it again is refused with TOPIC_ALREADY_EXISTS.
        again = admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)],
                                    request_timeout=15)[name]
        with pytest.raises(KafkaException) as exists:
            again.result(timeout=15)
        assert exists.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS

        # describe_topics (Metadata by name, with topic ids).
        from confluent_kafka import TopicCollection
        described = admin.describe_topics(TopicCollection([name]), request_timeout=10)[name] \
            .result(timeout=15)
        assert described.name == name
        assert [p.id for p in described.partitions] == [0, 1, 2]
        assert not described.is_internal

        # Grow it to 5 partitions.
        admin.create_partitions([NewPartitions(name, 5)], request_timeout=15)[name] \
            .result(timeout=15)
        helpers.wait_for("5 partitions in Metadata", lambda: sorted(
            admin.list_topics(topic=name, timeout=10).topics[name].partitions) == [0, 1, 2, 3, 4])

        # Delete both; they disappear from Metadata.
        for f in admin.delete_topics([name, other], request_timeout=15,
                                     operation_timeout=15).values():
            assert f.result(timeout=15) is None
        helpers.wait_for("deleted topics to leave Metadata", lambda: not (
            {name, other} & set(admin.list_topics(timeout=10).topics)))

        # Deleting again: UNKNOWN_TOPIC_OR_PART.
        with pytest.raises(KafkaException) as unknown:
            admin.delete_topics([name], request_timeout=15)[name].result(timeout=15)
        assert unknown.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    finally:
        helpers.delete_topics(admin, [t for t in (name, other)
                                      if t in admin.list_topics(timeout=10).topics])


def test_admin_describe_and_alter_configs(broker, admin, new_topic):
    topic = new_topic(partitions=1, config={"retention.ms": "3600000"})

    def describe() -> dict:
        res = ConfigResource(ConfigResource.Type.TOPIC, topic)
        return admin.describe_configs([res], request_timeout=10)[res].result(timeout=15)

    configs = describe()
    entry = configs["retention.ms"]
    assert entry.value == "3600000"
    assert not entry.is_default
    assert entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    # Settings left alone are reported with their defaults.
    assert configs["cleanup.policy"].value == "delete"
    assert configs["cleanup.policy"].is_default
    assert configs["max.message.bytes"].value.isdigit()
    assert configs["segment.bytes"].value.isdigit()

    # IncrementalAlterConfigs: set one key, delete the override of another.
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("segment.ms", "3600000",
                    incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
    ])
    admin.incremental_alter_configs([res], request_timeout=10)[res].result(timeout=15)
    configs = describe()
    assert configs["segment.ms"].value == "3600000"
    assert not configs["segment.ms"].is_default
    assert configs["retention.ms"].is_default
    assert configs["retention.ms"].value == "604800000"

    # An unknown topic is an error, not an empty answer.
    missing = ConfigResource(ConfigResource.Type.TOPIC, helpers.unique("no-such-topic"))
    with pytest.raises(KafkaException) as err:
        admin.describe_configs([missing], request_timeout=10)[missing].result(timeout=15)
    assert err.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_admin_describe_cluster(broker, admin):
    cluster = admin.describe_cluster(request_timeout=10).result(timeout=15)
    host, port = helpers.split_hostport(broker.bootstrap)
    assert cluster.cluster_id
    assert cluster.controller is not None
    endpoints = {(n.host, n.port) for n in cluster.nodes}
    if broker.is_ferry:
        assert endpoints == {(host, port)}
        assert cluster.controller.id == cluster.nodes[0].id


# --- idempotence (enabled automatically once InitProducerId is advertised) ----------------------

@pytest.mark.needs_idempotence
def test_idempotent_producer_roundtrip(broker, new_topic):
    topic = new_topic(partitions=2)
    p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True,
                  "compression.type": "zstd", "linger.ms": 20})
    records = [dict(topic=topic, key=f"k{i % 7}".encode(), value=f"v{i}".encode())
               for i in range(300)]
    produce_all(p, records)
    c = consumer(broker.bootstrap, helpers.unique("g-idem"))
    try:
        assign_from_beginning(c, topic)
        got = consume_n(c, len(records))
    finally:
        c.close()
    assert sorted(m.value() for m in got) == sorted(r["value"] for r in records)
    last: dict[bytes, int] = {}
    for m in got:
        seq = int(m.value()[1:])
        assert last.get(m.key(), -1) < seq, "per-key order broken"
        last[m.key()] = seq
    if broker.is_ferry:
        assert_idempotent_batches(broker, topic, partitions=2)


def assert_idempotent_batches(broker, topic: str, partitions: int) -> None:
    """The stored batches carry one producer id and epoch, and per partition the sequence
    numbers run on without a gap from 0."""
    ids = set()
    for part in range(partitions):
        expected_seq = 0
        for b in helpers.stored_batches(broker.data_dir, topic, part):
            ids.add((b.producer_id, b.producer_epoch))
            assert b.base_sequence == expected_seq, (part, b)
            expected_seq += b.record_count
    assert len(ids) == 1 and next(iter(ids))[0] >= 0, ids
