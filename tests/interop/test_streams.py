"""Streams with the Python clients: pika declares `x-queue-type=stream` queues and consumes them
with `x-stream-offset` (first, last, next, an offset, a timestamp, an interval), as RabbitMQ's
documentation shows; confluent-kafka produces to and reads the same logs.

The `amqp` cases describe RabbitMQ's behaviour and pass against RabbitMQ (3.9+ has streams;
Debian bookworm ships 3.10.8) as well as Ferry. The cross-protocol cases need one broker speaking
both protocols, so they run only against the spawned Ferry.
"""

from __future__ import annotations

import datetime
import time

import pika
import pika.exceptions
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING

from amqp_helpers import connect, name


def _ferry_only(request) -> None:
    if request.config.getoption("--kafka-bootstrap") or request.config.getoption("--amqp-url"):
        pytest.skip("cross-protocol case: needs Ferry serving both Kafka and AMQP")


@pytest.fixture
def conn(amqp_url):
    c = connect(amqp_url)
    yield c
    if c.is_open:
        c.close()


def _stream_name(request) -> str:
    # Streams are topics in Ferry, so the name keeps to Kafka's characters.
    return name(request).replace("[", "-").replace("]", "-")


def _declare_stream(ch, stream: str, **arguments) -> None:
    ch.queue_declare(stream, durable=True,
                     arguments={"x-queue-type": "stream", **arguments})


def _publish(ch, stream: str, bodies: list[bytes]) -> None:
    ch.confirm_delivery()
    for b in bodies:
        ch.basic_publish("", stream, b, pika.BasicProperties(
            content_type="text/plain", headers={"n": int(b[1:])}))


def _read(conn, stream: str, offset, expect: int, settle: float = 0.5,
          timeout: float = 10.0) -> list[tuple]:
    """Consumes `stream` from `offset` on a fresh channel (prefetch 100, manual acks) until
    `expect` deliveries arrived, then for `settle` seconds more to catch extras; returns
    (method, properties, body) tuples. The consumer is cancelled before returning."""
    ch = conn.channel()
    ch.basic_qos(prefetch_count=100)
    got: list[tuple] = []

    def on_message(c, method, props, body):
        got.append((method, props, body))
        c.basic_ack(method.delivery_tag)

    args = {} if offset is None else {"x-stream-offset": offset}
    tag = ch.basic_consume(stream, on_message, arguments=args)
    deadline = time.monotonic() + timeout
    while len(got) < expect and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    end = time.monotonic() + settle
    while time.monotonic() < end:
        conn.process_data_events(time_limit=0.05)
    ch.basic_cancel(tag)
    ch.close()
    return got


def _bodies(got) -> list[bytes]:
    return [b for _, _, b in got]


@pytest.mark.amqp
def test_stream_offsets_first_offset_last_next(request, conn):
    stream = _stream_name(request)
    ch = conn.channel()
    _declare_stream(ch, stream, **{"x-max-age": "1D"})
    try:
        all_bodies = [f"m{i}".encode() for i in range(5)]
        _publish(ch, stream, all_bodies)

        first = _read(conn, stream, "first", 5)
        assert _bodies(first) == all_bodies
        assert [p.headers["x-stream-offset"] for _, p, _ in first] == [0, 1, 2, 3, 4]
        assert [p.headers["n"] for _, p, _ in first] == [0, 1, 2, 3, 4]
        assert all(p.content_type == "text/plain" for _, p, _ in first)
        assert all(m.routing_key == stream and m.exchange == "" for m, _, _ in first)

        assert _bodies(_read(conn, stream, 3, 2)) == all_bodies[3:]

        # "last" starts at the last chunk: RabbitMQ may have written several messages into
        # it, so the answer is a suffix that ends with the newest message.
        last = _bodies(_read(conn, stream, "last", 1))
        assert last and last == all_bodies[-len(last):]

        assert _read(conn, stream, "next", 0) == []
        assert _read(conn, stream, None, 0) == []   # next is the default
    finally:
        ch.queue_delete(stream)


@pytest.mark.amqp
def test_stream_offsets_timestamp_and_interval(request, conn):
    stream = _stream_name(request)
    ch = conn.channel()
    _declare_stream(ch, stream)
    try:
        all_bodies = [f"m{i}".encode() for i in range(3)]
        _publish(ch, stream, all_bodies)
        hour_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
        in_an_hour = hour_ago + datetime.timedelta(hours=2)
        # pika sends a datetime as the AMQP timestamp type.
        assert _bodies(_read(conn, stream, hour_ago, 3)) == all_bodies
        assert _read(conn, stream, in_an_hour, 0) == []
        assert _bodies(_read(conn, stream, "1h", 3)) == all_bodies
    finally:
        ch.queue_delete(stream)


@pytest.mark.amqp
def test_next_consumer_receives_new_publishes(request, conn):
    stream = _stream_name(request)
    ch = conn.channel()
    _declare_stream(ch, stream)
    try:
        _publish(ch, stream, [b"m0"])
        reader = conn.channel()
        reader.basic_qos(prefetch_count=10)
        got: list[bytes] = []

        def on_message(c, method, props, body):
            got.append(body)
            c.basic_ack(method.delivery_tag)

        reader.basic_consume(stream, on_message, arguments={"x-stream-offset": "next"})
        conn.process_data_events(time_limit=0.3)
        _publish(ch, stream, [b"m1", b"m2"])
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
        assert got == [b"m1", b"m2"]
    finally:
        ch.queue_delete(stream)


@pytest.mark.amqp
def test_stream_refusals(request, amqp_url):
    stream = _stream_name(request)
    c = connect(amqp_url)
    ch = c.channel()
    _declare_stream(ch, stream)
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            c.channel().queue_declare(stream + "-transient", durable=False,
                                      arguments={"x-queue-type": "stream"})
        assert e.value.reply_code == 406

        # An interval must be positive. (A word like "banana" is 406 too in RabbitMQ 3.11+
        # and Ferry, but crashes RabbitMQ 3.10's channel with 541, so it is not used here.)
        bad = c.channel()
        bad.basic_qos(prefetch_count=10)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            bad.basic_consume(stream, lambda *a: None, arguments={"x-stream-offset": "0h"})
        assert e.value.reply_code == 406

        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            c.channel().basic_consume(stream, lambda *a: None,
                                      arguments={"x-stream-offset": "first"})
        assert e.value.reply_code == 406   # no prefetch

        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
            c.channel().basic_get(stream)
        assert e.value.reply_code == 540
    finally:
        c2 = connect(amqp_url)
        c2.channel().queue_delete(stream)
        c2.close()


def test_kafka_topic_is_readable_as_a_stream(request, broker, new_topic, amqp_url):
    _ferry_only(request)
    topic = new_topic(partitions=1)
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    for i in range(3):
        p.produce(topic, key=f"k{i}".encode(), value=f"r{i}".encode(),
                  headers=[("origin", b"kafka")])
        p.flush(15)
    c = connect(amqp_url)
    try:
        got = _read(c, topic, 1, 2)
        assert _bodies(got) == [b"r1", b"r2"]
        for i, (m, props, _) in enumerate(got, start=1):
            assert props.headers["x-stream-offset"] == i
            assert props.headers["origin"] in ("kafka", b"kafka")
            assert m.exchange == topic and m.routing_key == f"k{i}"
    finally:
        c.close()


def test_stream_queue_is_read_and_written_by_confluent_kafka(request, broker, amqp_url):
    _ferry_only(request)
    stream = _stream_name(request)
    c = connect(amqp_url)
    ch = c.channel()
    _declare_stream(ch, stream)
    try:
        _publish(ch, stream, [b"m0", b"m1"])
        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": stream,
                             "enable.auto.commit": False})
        consumer.assign([TopicPartition(stream, 0, OFFSET_BEGINNING)])
        records = []
        deadline = time.monotonic() + 20
        while len(records) < 2 and time.monotonic() < deadline:
            m = consumer.poll(0.2)
            if m is not None:
                assert m.error() is None, m.error()
                records.append(m)
        consumer.close()
        assert [m.value() for m in records] == [b"m0", b"m1"]
        assert [m.offset() for m in records] == [0, 1]
        assert dict(records[0].headers())["amqp.content-type"] == b"text/plain"

        p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
        p.produce(stream, key=b"k", value=b"from-kafka")
        p.flush(15)
        got = _read(c, stream, "first", 3)
        assert _bodies(got) == [b"m0", b"m1", b"from-kafka"]
        assert got[2][1].headers["x-stream-offset"] == 2
    finally:
        ch.queue_delete(stream)
        c.close()
