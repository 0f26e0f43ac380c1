"""Small helpers shared by the interop cases: names, deadlines, a raw ApiVersions probe, topic
set-up through confluent-kafka's AdminClient and a reader for Ferry's on-disk record batches."""

from __future__ import annotations

import re
import socket
import struct
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Optional, TypeVar

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

T = TypeVar("T")

# Kafka API keys used by the suite.
API_INIT_PRODUCER_ID = 22
API_PRODUCE = 0
API_FETCH = 1
API_JOIN_GROUP = 11

# Record batch v2 attribute bits 0-2: the compression codec.
COMPRESSION_CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def unique(prefix: str) -> str:
    """A topic or group name no other case (or earlier run against the same broker) uses."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "-", prefix)[:60]
    return f"it-{clean}-{uuid.uuid4().hex[:10]}"


def wait_for(what: str, check: Callable[[], Optional[T]], timeout: float = 30.0,
             interval: float = 0.05) -> T:
    """Calls `check` until it returns something truthy and returns that; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    last_error: Optional[BaseException] = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - reported below if it never succeeds
            last_error = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                                 + (f" (last error: {last_error!r})" if last_error else ""))
        time.sleep(interval)


def split_hostport(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


def api_versions(bootstrap: str, timeout: float = 10.0) -> dict[int, tuple[int, int]]:
    """Sends ApiVersions v0 over a plain socket and returns {api_key: (min, max)}."""
    host, port = split_hostport(bootstrap.split(",")[0])
    client_id = b"ferry-interop"
    header = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(struct.pack(">i", len(header)) + header)
        size = struct.unpack(">i", _recv_exact(s, 4))[0]
        body = _recv_exact(s, size)
    correlation_id, error, count = struct.unpack_from(">ihi", body, 0)
    assert correlation_id == 1, f"ApiVersions answered correlation id {correlation_id}"
    assert error == 0, f"ApiVersions v0 answered error code {error}"
    table = {}
    for i in range(count):
        key, lo, hi = struct.unpack_from(">hhh", body, 10 + 6 * i)
        table[key] = (lo, hi)
    return table


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def create_topic(admin: AdminClient, name: str, partitions: int = 1,
                 config: Optional[dict[str, str]] = None, timeout: float = 30.0) -> None:
    """Creates a topic through CreateTopics and waits until Metadata shows every partition."""
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        request_timeout=timeout, operation_timeout=timeout)
    futures[name].result(timeout=timeout)
    wait_for(f"topic {name} with {partitions} partitions in Metadata",
             lambda: _partition_count(admin, name) == partitions, timeout=timeout)


def _partition_count(admin: AdminClient, name: str) -> int:
    md = admin.list_topics(topic=name, timeout=10)
    t = md.topics.get(name)
    if t is None or t.error is not None:
        return -1
    return len(t.partitions)


def delete_topics(admin: AdminClient, names: Iterable[str], timeout: float = 30.0) -> None:
    names = list(names)
    if not names:
        return
    for name, f in admin.delete_topics(names, request_timeout=timeout,
                                       operation_timeout=timeout).items():
        try:
            f.result(timeout=timeout)
        except KafkaException as e:
            # A case may already have deleted its topic; anything else is worth seeing.
            if "UNKNOWN_TOPIC" not in str(e):
                raise


class StoredBatch(NamedTuple):
    base_offset: int
    record_count: int
    attributes: int
    producer_id: int
    producer_epoch: int
    base_sequence: int

    @property
    def codec(self) -> int:
        return self.attributes & 0x7


def stored_batches(data_dir: Path, topic: str, partition: int) -> list[StoredBatch]:
    """The record batch headers Ferry stored for a partition, read from its segment files
    (logs/<topic>-<partition>/*.log)."""
    out = []
    pdir = data_dir / "logs" / f"{topic}-{partition}"
    for seg in sorted(pdir.glob("*.log")):
        data = seg.read_bytes()
        pos = 0
        while pos + 61 <= len(data):
            base_offset, batch_len = struct.unpack_from(">qi", data, pos)
            if batch_len <= 0:
                break  # preallocated, zero-filled space after the last batch
            magic = data[pos + 16]
            assert magic == 2, f"{seg}: batch at byte {pos} has magic {magic}"
            attributes = struct.unpack_from(">h", data, pos + 21)[0]
            producer_id, producer_epoch, base_sequence, record_count = struct.unpack_from(
                ">qhii", data, pos + 43)
            out.append(StoredBatch(base_offset, record_count, attributes, producer_id,
                                   producer_epoch, base_sequence))
            pos += 12 + batch_len
    return out
