"""KIP-848 consumer groups (`group.protocol=consumer`) through confluent-kafka: consumers join
and leave one by one, every partition has exactly one owner after each step, and no record is
processed (consumed, then committed synchronously) twice or never.

Skipped only when the installed confluent-kafka bundles a librdkafka older than 2.4 (the first
with the consumer protocol GA) or the broker does not advertise ConsumerGroupHeartbeat."""

from __future__ import annotations

import time

import confluent_kafka
import pytest
from confluent_kafka import Consumer, KafkaException, Producer

import helpers

API_CONSUMER_GROUP_HEARTBEAT = 68
PARTITIONS = 4
# The broker's default heartbeat interval is 5 s and a step takes a few heartbeats.
SETTLE_TIMEOUT = 60.0


@pytest.fixture(autouse=True)
def _needs_kip848(broker) -> None:
    version = confluent_kafka.libversion()[1]
    if version < 0x02040000:
        pytest.skip(f"librdkafka {confluent_kafka.libversion()[0]} lacks group.protocol=consumer")
    if API_CONSUMER_GROUP_HEARTBEAT not in broker.api_versions:
        pytest.skip("the broker does not advertise ConsumerGroupHeartbeat")


def consumer(bootstrap: str, group: str, topic: str, name: str) -> Consumer:
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "group.protocol": "consumer",
        "client.id": name,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    c.subscribe([topic])
    return c


def produce(bootstrap: str, topic: str, start: int, count: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False, "acks": "all"})
    for i in range(start, start + count):
        p.produce(topic, value=f"r{i}".encode(), partition=i % PARTITIONS)
    assert p.flush(15) == 0


class Ledger:
    def __init__(self) -> None:
        self.processed: dict[str, int] = {}

    def pump(self, consumers: dict[str, Consumer]) -> None:
        for c in consumers.values():
            for _ in range(20):
                msg = c.poll(0.02)
                if msg is None:
                    break
                if msg.error():
                    continue
                try:
                    c.commit(message=msg, asynchronous=False)
                except KafkaException:
                    continue  # the partition moved on: its next owner gets the record again
                key = msg.value().decode()
                self.processed[key] = self.processed.get(key, 0) + 1


def settle(ledger: Ledger, consumers: dict[str, Consumer], step: str) -> dict[str, set[int]]:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    steady = 0
    owned: dict[str, set[int]] = {}
    while True:
        assert time.monotonic() < deadline, f"{step}: the group did not settle: {owned}"
        ledger.pump(consumers)
        owned = {n: {tp.partition for tp in c.assignment()} for n, c in consumers.items()}
        every = [p for ps in owned.values() for p in ps]
        # Every partition exactly once, and the uniform assignor's even split (a member that
        # just joined owns nothing until the others have revoked for it).
        exact = sorted(every) == list(range(PARTITIONS))
        sizes = [len(ps) for ps in owned.values()]
        balanced = max(sizes) - min(sizes) <= 1
        steady = steady + 1 if exact and balanced else 0
        if steady >= 5:
            return owned


def test_consumers_join_and_leave_with_one_owner_per_partition(broker, admin, new_topic):
    topic = new_topic(partitions=PARTITIONS)
    group = helpers.unique("kip848")
    ledger = Ledger()
    produced = 0

    def batch() -> None:
        nonlocal produced
        produce(broker.bootstrap, topic, produced, 40)
        produced += 40

    batch()
    members = {"c1": consumer(broker.bootstrap, group, topic, "c1")}
    settle(ledger, members, "c1 joins")
    batch()
    members["c2"] = consumer(broker.bootstrap, group, topic, "c2")
    settle(ledger, members, "c2 joins")
    batch()
    members["c3"] = consumer(broker.bootstrap, group, topic, "c3")
    settle(ledger, members, "c3 joins")
    batch()
    members.pop("c1").close()
    settle(ledger, members, "c1 leaves")
    batch()
    members.pop("c2").close()
    owned = settle(ledger, members, "c2 leaves")
    assert owned == {"c3": set(range(PARTITIONS))}

    deadline = time.monotonic() + SETTLE_TIMEOUT
    while len(ledger.processed) < produced and time.monotonic() < deadline:
        ledger.pump(members)
    members.pop("c3").close()
    twice = {k: n for k, n in ledger.processed.items() if n > 1}
    assert not twice, f"processed more than once: {twice}"
    missing = [f"r{i}" for i in range(produced) if f"r{i}" not in ledger.processed]
    assert not missing, f"never processed: {missing}"
