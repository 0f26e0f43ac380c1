"""The tool APIs over what the log knows, through real clients: kafka-python's
KafkaAdminClient.describe_producers (DescribeProducers) and describe_log_dirs
(DescribeLogDirs), and librdkafka's offset validation (OffsetForLeaderEpoch, KIP-320) of a
committed offset that carries a leader epoch."""

from __future__ import annotations

import re
import time
import urllib.request

from confluent_kafka import Consumer, TopicPartition as CkTopicPartition
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition

import helpers


def requests_answered(broker, api: str) -> int:
    with urllib.request.urlopen(f"{broker.http}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r'^ferry_kafka_request_seconds_count\{api="%s"\} (\d+)$' % api, text, re.M)
    return int(m.group(1)) if m else 0


def test_describe_producers_shows_idempotent_and_transactional_producers(broker, new_topic):
    topic = new_topic(partitions=2)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    idem = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=True, acks="all")
    txn = KafkaProducer(bootstrap_servers=broker.bootstrap,
                        transactional_id=helpers.unique("describe-producers"))
    try:
        before = int(time.time() * 1000) - 1000
        for i in range(3):
            idem.send(topic, value=f"i{i}".encode(), partition=0)
        idem.flush(timeout=30)

        txn.init_transactions()
        txn.begin_transaction()
        txn.send(topic, value=b"t0", partition=1)
        txn.send(topic, value=b"t1", partition=1)
        txn.flush(timeout=30)

        tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
        states = admin.describe_producers([tp0, tp1])
        [p0] = states[tp0].active_producers
        assert p0.producer_id >= 0
        assert p0.producer_epoch == 0
        assert p0.last_sequence == 2
        assert p0.last_timestamp >= before
        assert p0.current_transaction_start_offset == -1
        [p1] = states[tp1].active_producers
        assert p1.producer_id != p0.producer_id
        assert p1.last_sequence == 1
        # The open transaction started at the partition's first offset.
        assert p1.current_transaction_start_offset == 0

        txn.commit_transaction()
        [p1] = admin.describe_producers([tp1])[tp1].active_producers
        assert p1.current_transaction_start_offset == -1
    finally:
        idem.close()
        txn.close()
        admin.close()


def test_describe_log_dirs_reports_partition_sizes(broker, new_topic):
    topic = new_topic(partitions=2)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                             enable_idempotence=False)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        for i in range(10):
            producer.send(topic, value=b"x" * 1000, partition=0)
        producer.flush(timeout=30)
        [answer] = admin.describe_log_dirs({topic: [0, 1, 7]})
        [log_dir] = answer["log_dirs"]
        assert log_dir["error_code"] == 0
        assert log_dir["log_dir"]
        [t] = [t for t in log_dir["topics"] if t["name"] == topic]
        sizes = {p["partition_index"]: p for p in t["partitions"]}
        # Partition 7 does not exist and is left out.
        assert set(sizes) == {0, 1}
        assert sizes[0]["partition_size"] >= 10 * 1000
        assert sizes[1]["partition_size"] == 0
        assert all(p["offset_lag"] == 0 and not p["is_future_key"] for p in sizes.values())
        # Everything: this topic is listed among all of them.
        [everything] = admin.describe_log_dirs()
        names = {t["name"] for d in everything["log_dirs"] for t in d["topics"]}
        assert topic in names
    finally:
        producer.close()
        admin.close()


def test_librdkafka_validates_a_seek_with_a_leader_epoch(broker, new_topic):
    """A position that carries a leader epoch is validated with OffsetForLeaderEpoch before
    fetching from it (KIP-320; librdkafka does so on a seek with an epoch and when Metadata
    shows a new leader epoch): epoch 0 ends at the log end, so a seek inside the log
    proceeds from there, and a seek past the end is detected as log truncation, which moves
    the consumer to the epoch's end, not to `auto.offset.reset`'s earliest offset."""
    topic = new_topic(partitions=1)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                             enable_idempotence=False)
    for i in range(10):
        producer.send(topic, value=f"v{i}".encode(), partition=0)
    producer.flush(timeout=30)

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": helpers.unique("epochs"),
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})

    def next_value(timeout: float = 30.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None or m.error() is not None:
                continue
            return m.value()
        raise AssertionError(f"no record within {timeout} s")

    try:
        c.assign([CkTopicPartition(topic, 0, 0)])
        assert next_value() == b"v0"

        before = requests_answered(broker, "OffsetForLeaderEpoch")
        c.seek(CkTopicPartition(topic, 0, 4, leader_epoch=0))
        assert next_value() == b"v4"
        validated = requests_answered(broker, "OffsetForLeaderEpoch")
        assert validated > before, "librdkafka validated the position's epoch"

        # Offset 50 in epoch 0, which ends at 10: truncation. librdkafka moves to 10, where
        # the next record will be (without the validation it would fetch 50, get
        # OFFSET_OUT_OF_RANGE and reset to the earliest offset, v0).
        c.seek(CkTopicPartition(topic, 0, 50, leader_epoch=0))
        helpers.wait_for("the truncation check",
                         lambda: requests_answered(broker, "OffsetForLeaderEpoch") > validated
                         or None, timeout=30)
        # Let the consumer act on the answer before anything new arrives.
        for _ in range(5):
            m = c.poll(0.2)
            assert m is None or m.error() is not None, m.value()
        producer.send(topic, value=b"v10", partition=0)
        producer.flush(timeout=30)
        assert next_value() == b"v10"
    finally:
        c.close()
        producer.close()
