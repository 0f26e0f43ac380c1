"""Event metadata across the protocols with the Python clients: CloudEvents between the Kafka
binding (`ce_*` headers, confluent-kafka) and the AMQP binding (`cloudEvents:*` application
properties, pika), W3C trace context, the id and timestamp Ferry assigns when a producer set
none, and AMQP application headers as plain record headers (typed ones round-trip exactly).

Cross-protocol cases need one broker speaking both protocols, so they run only against the
spawned Ferry (they are skipped with --kafka-bootstrap or --amqp-url).
"""

from __future__ import annotations

import datetime
import time
import uuid
from decimal import Decimal

import pika
import pika.data
import pytest
from confluent_kafka import Consumer, Producer

from amqp_helpers import connect, get_all, name, text

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACESTATE = "congo=t61rcWkgMzE"


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


def _bound_queue(ch, request, topic: str) -> str:
    """A queue bound to topic exchange `topic` with `#`: every record of the topic reaches it."""
    q = name(request, "q")
    ch.queue_declare(q, auto_delete=False)
    ch.queue_bind(q, topic, routing_key="#")
    return q


def _produce(bootstrap: str, topic: str, key: bytes, value: bytes, headers, timestamp=0):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    delivered = []
    p.produce(topic, key=key, value=value, headers=headers, timestamp=timestamp,
              on_delivery=lambda err, msg: delivered.append((err, msg)))
    p.flush(15)
    assert len(delivered) == 1 and delivered[0][0] is None, delivered
    return delivered[0][1]


def _consume(bootstrap: str, topic: str, count: int, timeout: float = 20.0):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"readers-{topic}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < count and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            assert m.error() is None, m.error()
            out.append(m)
    finally:
        c.close()
    assert len(out) == count, f"got {len(out)} of {count} records"
    return out


def _headers(msg) -> dict[str, bytes]:
    return {k: v for k, v in (msg.headers() or [])}


def test_confluent_cloudevent_reaches_pika_as_cloudevents_properties(broker, new_topic, ch,
                                                                     request):
    topic = new_topic()
    q = _bound_queue(ch, request, topic)
    attrs = {
        "ce_specversion": "1.0",
        "ce_id": "evt-py-1",
        "ce_source": "/py/orders",
        "ce_type": "com.example.order.created",
        "ce_time": "2024-01-02T03:04:05Z",
        "ce_subject": "order-9",
        "ce_tenant": "acme",
    }
    headers = [(k, v.encode()) for k, v in attrs.items()]
    headers += [("content-type", b"application/json"), ("traceparent", TRACEPARENT.encode())]
    _produce(broker.bootstrap, topic, b"order-9", b'{"n":1}', headers)

    [(method, props, body)] = get_all(ch, q, 1)
    assert body == b'{"n":1}'
    got = {k: text(v) for k, v in (props.headers or {}).items()}
    for k, v in attrs.items():
        assert got.get("cloudEvents:" + k[3:]) == v, got
    assert not any(k.startswith("ce_") for k in got), got
    assert got.get("traceparent") == TRACEPARENT
    assert props.content_type == "application/json"
    assert props.message_id == "evt-py-1"
    assert props.timestamp == 1_704_164_645
    ch.queue_delete(q)


def test_pika_cloudevent_and_traceparent_reach_confluent_consumer(broker, new_topic, ch,
                                                                   request):
    topic = new_topic()
    q = _bound_queue(ch, request, topic)
    ch.confirm_delivery()
    headers = {
        "cloudEvents:specversion": "1.0",
        "cloudEvents:id": "evt-amqp-1",
        "cloudEvents:source": "/py/billing",
        "cloudEvents:type": "com.example.invoice.paid",
        "traceparent": TRACEPARENT,
        "tracestate": TRACESTATE,
        "attempt": 2,
    }
    ch.basic_publish(topic, "inv-1", b"{}", pika.BasicProperties(
        content_type="application/json", headers=headers))

    [m] = _consume(broker.bootstrap, topic, 1)
    h = _headers(m)
    assert h.get("ce_specversion") == b"1.0", h
    assert h.get("ce_id") == b"evt-amqp-1", h
    assert h.get("ce_source") == b"/py/billing", h
    assert h.get("ce_type") == b"com.example.invoice.paid", h
    assert h.get("content-type") == b"application/json", h
    assert h.get("traceparent") == TRACEPARENT.encode(), h
    assert h.get("tracestate") == TRACESTATE.encode(), h

    # An AMQP consumer of the same topic gets the message as published.
    [(method, props, body)] = get_all(ch, q, 1)
    assert props.content_type == "application/json"
    assert {k: (text(v) if isinstance(v, (str, bytes)) else v)
            for k, v in props.headers.items()} == headers
    ch.queue_delete(q)


def test_broker_assigned_id_and_timestamp_are_the_same_on_both_sides(broker, new_topic, ch,
                                                                     request):
    topic = new_topic()
    q = _bound_queue(ch, request, topic)
    ch.confirm_delivery()
    before = int(time.time() * 1000)
    ch.basic_publish(topic, "k", b"no id", pika.BasicProperties())
    after = int(time.time() * 1000)

    [m] = _consume(broker.bootstrap, topic, 1)
    assigned = _headers(m).get("ferry.message-id")
    assert assigned is not None, m.headers()
    assert uuid.UUID(assigned.decode()).version == 7
    _, ts = m.timestamp()
    assert before <= ts <= after

    [(method, props, body)] = get_all(ch, q, 1)
    assert body == b"no id"
    assert props.message_id == assigned.decode()
    assert props.timestamp == ts // 1000

    # A Kafka record without an id is known by its location.
    delivered = _produce(broker.bootstrap, topic, b"k", b"kafka, no id", [],
                         timestamp=1_650_000_123_456)
    [(method, props, body)] = get_all(ch, q, 1)
    assert body == b"kafka, no id"
    assert props.message_id == f"{topic}/{delivered.partition()}/{delivered.offset()}"
    assert props.timestamp == 1_650_000_123
    ch.queue_delete(q)


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


def test_pika_headers_are_plain_kafka_record_headers(broker, new_topic, ch):
    """headers={"x-source": "amqp"} reaches a Kafka consumer as the record header x-source;
    typed values as their canonical text."""
    topic = new_topic()
    ch.confirm_delivery()
    ch.basic_publish(topic, "k", b"{}", pika.BasicProperties(headers=TYPED_HEADERS))
    [m] = _consume(broker.bootstrap, topic, 1)
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
    """pika -> Kafka topic -> bound queue -> pika gives back exactly what was published."""
    topic = new_topic()
    q = _bound_queue(ch, request, topic)
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
