"""Log compaction (issue 17) with confluent-kafka and kcat: a `cleanup.policy=compact` topic
read from the beginning holds the latest value of every key (offsets kept, gaps where older
values were), tombstones stay until `delete.retention.ms`, and a keyless record is refused with
INVALID_RECORD. Runs against a Ferry of its own whose cleaner looks every 200 ms."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

import helpers

KEYS = 25
UPDATES = 40


@pytest.fixture
def compacting_ferry(spawn_ferry, tmp_path: Path):
    config = tmp_path / "cleaner.toml"
    config.write_text("[log]\ncleaner_backoff_ms = 200\n")
    return spawn_ferry("--config", str(config))


def kcat_records(bootstrap: str, topic: str) -> list[tuple[int, str, str | None]]:
    """(offset, key, value or None for a tombstone) of every record, read with kcat."""
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.fail("kcat is not on PATH: `apt-get install kcat`", pytrace=False)
    done = subprocess.run(
        [kcat, "-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q",
         "-f", "%o\t%k\t%S\t%s\n"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    records = []
    for line in done.stdout.splitlines():
        offset, key, size, value = line.split("\t", 3)
        records.append((int(offset), key, None if size == "-1" else value))
    return records


def produce(p: Producer, topic: str, key: str | None, value: str | None) -> None:
    errors: list[KafkaError] = []
    p.produce(topic, key=key, value=value, partition=0,
              on_delivery=lambda err, _msg: errors.append(err) if err else None)
    p.flush(20)
    if errors:
        raise KafkaException(errors[0])


def test_compacted_topic_read_from_the_beginning_has_the_latest_value_per_key(
        compacting_ferry) -> None:
    bootstrap = compacting_ferry.bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = helpers.unique("compacted")
    helpers.create_topic(admin, topic, config={
        "cleanup.policy": "compact",
        "segment.bytes": "4096",
        "min.cleanable.dirty.ratio": "0.01",
    })
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    latest: dict[str, str | None] = {}
    for round_ in range(UPDATES):
        for k in range(KEYS):
            key, value = f"user-{k:02}", f"profile {round_} of user-{k:02}"
            p.produce(topic, key=key, value=value, partition=0)
            latest[key] = value
        p.flush(20)
    produce(p, topic, "user-00", None)
    latest["user-00"] = None
    for k in range(1, KEYS):
        key, value = f"user-{k:02}", f"final profile of user-{k:02}"
        produce(p, topic, key, value)
        latest[key] = value
    produced = KEYS * UPDATES + KEYS

    with pytest.raises(KafkaException) as refused:
        produce(p, topic, None, "no key")
    assert refused.value.args[0].code() == KafkaError.INVALID_RECORD, refused.value

    def compacted():
        records = kcat_records(bootstrap, topic)
        counts: dict[str, int] = {}
        for _, key, _ in records:
            counts[key] = counts.get(key, 0) + 1
        # Sealed segments hold one record per key; the active one (4 KiB) a few more.
        return records if len(records) < produced // 5 and max(counts.values()) <= 3 else None

    records = helpers.wait_for("the cleaner to compact the topic", compacted)
    assert {key: value for _, key, value in records} == latest
    offsets = [o for o, _, _ in records]
    assert offsets == sorted(set(offsets))
    assert offsets[-1] == produced - 1, "offsets are kept"
    assert [key for _, key, value in records if value is None] == ["user-00"]
