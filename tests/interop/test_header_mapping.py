"""AMQP application headers are readable from every protocol: a pika publish with
headers={"x-source": "amqp"} reaches a Kafka consumer (confluent-kafka) as a plain record header
`x-source`, typed values as their canonical text, and an AMQP consumer of the same topic gets
back exactly what was published, field types included.

Cross-protocol cases need one broker speaking both protocols, so they run only against the
spawned Ferry (they are skipped with --kafka-bootstrap or --amqp-url).
"""

from __future__ import annotations

import datetime
import time
from decimal import Decimal

import pika
import pika.data
import pytest
from confluent_kafka import Consumer

from amqp_helpers import connect, get_all, name


@pytest.fixture(autouse=True)
def _ferry_only(request):
    if request.config.getoption("--kafka-bootstrap") or request.config.getoption("--amqp-url"):
        pytest.skip("cross-protocol case: needs Ferry serving both Kafka and AMQP")


@pytest.fixture
def ch(amqp_url):
    c = connect(amqp_url)
    yield c.channel()
    if c.is_open:
        c.close()


# One header of every type pika writes: S (str), I and l (int), t (bool),
# D (Decimal), T (datetime), F (dict), A (list), V (None), x (bytes).
TYPED_HEADERS = {
    "x-source": "amqp",
    "x-unicode": "grüße",
    "attempt": 2,
    "big": 2**40,
    "urgent": True,
    "price": Decimal("19.99"),
    "sent-at": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    "route": {"region": "eu", "hops": 3},
    "tags": ["a", 1, False],
    "nothing": None,
    "raw": b"\x00\xffbin",
}


def _first_record(bootstrap: str, topic: str, timeout: float = 20.0):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"readers-{topic}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            assert m.error() is None, m.error()
            return m
    finally:
        c.close()
    raise AssertionError(f"no record in {topic} within {timeout} s")


def test_pika_headers_are_plain_kafka_record_headers(broker, new_topic, ch):
    topic = new_topic()
    ch.confirm_delivery()
    ch.basic_publish(topic, "k", b"{}", pika.BasicProperties(headers=TYPED_HEADERS))
    m = _first_record(broker.bootstrap, topic)
    h = dict(m.headers() or [])
    assert h.get("x-source") == b"amqp", h
    assert h.get("x-unicode") == "grüße".encode(), h
    assert h.get("attempt") == b"2", h
    assert h.get("big") == str(2**40).encode(), h
    assert h.get("urgent") == b"true", h
    assert h.get("price") == b"19.99", h
    assert h.get("sent-at") == b"2024-01-02T03:04:05Z", h
    assert h.get("route") == b'{"hops":3,"region":"eu"}', h
    assert h.get("tags") == b'["a",1,false]', h
    assert "nothing" in h and h["nothing"] is None, h
    assert h.get("raw") == b"\x00\xffbin", h


def test_pika_headers_round_trip_exactly_through_a_topic_to_a_bound_queue(new_topic, ch,
                                                                          request):
    topic = new_topic()
    q = name(request, "q")
    ch.queue_declare(q, auto_delete=False)
    ch.queue_bind(q, topic, routing_key="#")
    ch.confirm_delivery()
    ch.basic_publish(topic, "k", b"body", pika.BasicProperties(headers=TYPED_HEADERS))
    [(method, props, body)] = get_all(ch, q, 1)
    assert body == b"body"
    assert method.exchange == topic
    # pika decodes each field by its AMQP type (an `l` long-long comes back as pika's `long`,
    # an `I` long as int): the same values of the same Python types as pika's own decoding of
    # what it encoded mean the same field types came back.
    pieces: list = []
    pika.data.encode_table(pieces, TYPED_HEADERS)
    as_published, _ = pika.data.decode_table(b"".join(pieces), 0)
    got = props.headers
    assert got == as_published == TYPED_HEADERS
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in as_published.items()}
    ch.queue_delete(q)
