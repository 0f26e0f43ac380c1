"""KIP-227 incremental fetch sessions with kafka-python, whose consumer uses them (librdkafka
does not): a consumer of 16 partitions gets every record exactly once while records keep
arriving, its fetcher reports incremental answers on a session the broker created, and never
an invalid answer or a session error."""

from __future__ import annotations

import logging
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

PARTITIONS = 16
WAVES = 5
PER_WAVE = 4  # records per partition per wave


def test_kafka_python_consumer_uses_incremental_fetch_sessions(broker, new_topic, caplog):
    topic = new_topic(partitions=PARTITIONS)
    caplog.set_level(logging.DEBUG, logger="kafka.consumer.fetcher")
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                             enable_idempotence=False)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, fetch_max_wait_ms=100)
    consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
    seen: list[tuple[int, int, bytes]] = []
    try:
        for wave in range(WAVES):
            for p in range(PARTITIONS):
                for i in range(PER_WAVE):
                    producer.send(topic, value=f"{wave}-{p}-{i}".encode(), partition=p)
            producer.flush(timeout=30)
            want = (wave + 1) * PARTITIONS * PER_WAVE
            deadline = time.monotonic() + 30
            while len(seen) < want:
                assert time.monotonic() < deadline, f"{len(seen)} of {want} records"
                for tp, records in consumer.poll(timeout_ms=500).items():
                    seen.extend((tp.partition, r.offset, r.value) for r in records)
            # Quiet polls: the session answers with no partitions until something arrives.
            for _ in range(3):
                for records in consumer.poll(timeout_ms=200).values():
                    seen.extend((r.partition, r.offset, r.value) for r in records)
    finally:
        consumer.close()
        producer.close()

    total = WAVES * PARTITIONS * PER_WAVE
    assert len(seen) == total, f"{len(seen)} records for {total} sent (duplicates or losses)"
    assert len({(p, o) for p, o, _ in seen}) == total
    for p in range(PARTITIONS):
        values = [v for q, _, v in sorted(seen) if q == p]
        expected = [f"{w}-{p}-{i}".encode() for w in range(WAVES) for i in range(PER_WAVE)]
        assert values == expected, f"partition {p}"

    messages = [r.getMessage() for r in caplog.records if r.name == "kafka.consumer.fetcher"]
    created = [m for m in messages if "created a new incremental fetch session" in m]
    incremental = [m for m in messages if "sent an incremental fetch response for session" in m]
    trouble = [m for m in messages
               if "invalid" in m or "was unable to process the fetch request" in m]
    assert created, "the broker never created a fetch session"
    assert len(incremental) >= WAVES, f"only {len(incremental)} incremental answers"
    assert not trouble, trouble
