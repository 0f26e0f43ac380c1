"""The worked examples of docs/patterns.md, run with confluent-kafka and pika: a work queue fed
by Kafka with a DLQ, fan-out from AMQP to a topic, retry with backoff then DLQ, request/reply,
delayed publishing and deduplication.

Cross-protocol cases need one broker speaking both protocols, so they run only against the
spawned Ferry (they are skipped with --kafka-bootstrap or --amqp-url).
"""

from __future__ import annotations

import time

import pika
import pytest
from confluent_kafka import Consumer, Producer

from amqp_helpers import connect, get_all, message_count, name, pump, text


@pytest.fixture(autouse=True)
def _ferry_only(request):
    if request.config.getoption("--kafka-bootstrap") or request.config.getoption("--amqp-url"):
        pytest.skip("cross-protocol case: needs Ferry serving both Kafka and AMQP")


@pytest.fixture
def conn(amqp_url):
    c = connect(amqp_url)
    yield c
    if c.is_open:
        c.close()


def _produce(bootstrap: str, topic: str, records) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0,
                  "partitioner": "murmur2_random"})
    errors = []
    for key, value, headers in records:
        p.produce(topic, key=key, value=value, headers=headers,
                  on_delivery=lambda err, msg: errors.append(err) if err else None)
    assert p.flush(15) == 0
    assert not errors, errors


def _death_reason(props) -> str:
    return text(props.headers["x-death"][0]["reason"])


def test_work_queue_fed_by_kafka_with_a_dead_letter_queue(broker, new_topic, conn, request):
    topic = new_topic(partitions=3)
    ch = conn.channel()
    work, dlq = name(request, "work"), name(request, "dlq")
    ch.queue_declare(dlq, durable=True)
    ch.queue_declare(work, durable=True, arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    ch.queue_bind(work, topic, routing_key="#")
    _produce(broker.bootstrap, topic, [
        (f"order-{i}".encode(), b"bad" if i == 3 else f"ok-{i}".encode(),
         {"message-id": f"o-{i}".encode()})
        for i in range(6)])

    done, rejected = [], []

    def worker(ch, method, props, body):
        if body == b"bad":
            rejected.append(text(props.headers["message-id"]))
            ch.basic_reject(method.delivery_tag, requeue=False)
        else:
            done.append(body)
            ch.basic_ack(method.delivery_tag)

    ch.basic_qos(prefetch_count=4)
    ch.basic_consume(work, worker)
    assert pump([conn], lambda: len(done) + len(rejected) == 6)
    assert sorted(done) == sorted(f"ok-{i}".encode() for i in range(6) if i != 3)
    assert rejected == ["o-3"]
    [(_, props, body)] = get_all(ch, dlq, 1)
    assert body == b"bad"
    assert _death_reason(props) == "rejected"
    assert text(props.headers["x-death"][0]["exchange"]) == topic
    # x-dead-letter-routing-key replaced the routing key; x-death keeps the original.
    assert [text(k) for k in props.headers["x-death"][0]["routing-keys"]] == ["order-3"]


def test_fan_out_from_an_amqp_publisher_to_a_topic(broker, new_topic, conn, request):
    topic = new_topic(partitions=2)
    ch = conn.channel()
    ch.confirm_delivery()
    alerts = name(request, "alerts")
    ch.queue_declare(alerts, durable=True)
    ch.queue_bind(alerts, topic, routing_key="user.*.login")
    events = [("user.42.login", b'{"ip": "10.0.0.7"}'), ("user.42.logout", b"{}"),
              ("user.7.login", b'{"ip": "10.0.0.9"}')]
    for i, (key, body) in enumerate(events):
        ch.basic_publish(topic, key, body, pika.BasicProperties(
            message_id=f"evt-{i}", content_type="application/json", delivery_mode=2))
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": name(request, "warehouse"),
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got = {}
    deadline = time.monotonic() + 20
    try:
        while len(got) < 3 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            headers = dict(m.headers() or [])
            got[m.key().decode()] = (m.value(), headers.get("amqp.message-id"))
    finally:
        c.close()
    assert got == {key: (body, f"evt-{i}".encode()) for i, (key, body) in enumerate(events)}
    # The AMQP queue bound with a pattern got only the logins.
    keys = sorted(method.routing_key for method, _, _ in get_all(ch, alerts, 2))
    assert keys == ["user.42.login", "user.7.login"]
    assert message_count(ch, alerts) == 0


def test_retry_with_backoff_then_dead_letter(conn, request):
    ch = conn.channel()
    work, dlq = name(request, "payments"), name(request, "dlq")
    ch.queue_declare(dlq, durable=True)
    ch.queue_declare(work, durable=True, arguments={
        "x-delayed-retry-min": 200,
        "x-delayed-retry-multiplier": 2,
        "x-delayed-retry-max": 60_000,
        "x-delivery-limit": 3,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dlq,
    })
    ch.basic_publish("", work, b"charge-17", pika.BasicProperties(delivery_mode=2))
    arrivals = []

    def charge(ch, method, props, body):
        arrivals.append(time.monotonic())
        ch.basic_nack(method.delivery_tag, requeue=True)

    ch.basic_consume(work, charge)
    assert pump([conn], lambda: len(arrivals) == 4, timeout=15)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    for gap, want in zip(gaps, [0.2, 0.4, 0.8]):
        assert want <= gap < want + 2.0, gaps
    [(_, props, body)] = get_all(ch, dlq, 1)
    assert body == b"charge-17"
    assert _death_reason(props) == "delivery_limit"


def test_request_reply_with_direct_reply_to(amqp_url, request):
    server, client = connect(amqp_url), connect(amqp_url)
    try:
        rpc = name(request, "rpc")
        sch = server.channel()
        sch.queue_declare(rpc)

        def serve(ch, method, props, body):
            ch.basic_publish("", props.reply_to, b"price:" + body,
                             pika.BasicProperties(correlation_id=props.correlation_id))
            ch.basic_ack(method.delivery_tag)

        sch.basic_consume(rpc, serve)
        cch = client.channel()
        replies = {}
        cch.basic_consume("amq.rabbitmq.reply-to",
                          lambda ch, m, props, body: replies.__setitem__(props.correlation_id,
                                                                         body),
                          auto_ack=True)
        for i, pair in enumerate([b"EURUSD", b"GBPUSD"]):
            cch.basic_publish("", rpc, pair, pika.BasicProperties(
                reply_to="amq.rabbitmq.reply-to", correlation_id=f"c-{i}"))
        assert pump([server, client], lambda: len(replies) == 2)
        assert replies == {"c-0": b"price:EURUSD", "c-1": b"price:GBPUSD"}
    finally:
        for c in (server, client):
            if c.is_open:
                c.close()


def test_delayed_publish_and_deduplication(conn, request):
    ch = conn.channel()
    ch.confirm_delivery()
    q = name(request, "reminders")
    ch.queue_declare(q, durable=True, arguments={
        "x-message-deduplication": True, "x-cache-ttl": 60_000})
    sent = time.monotonic()
    ch.basic_publish("", q, b"later", pika.BasicProperties(headers={"x-delay": 500},
                                                           message_id="r-1"))
    ch.basic_publish("", q, b"now", pika.BasicProperties(message_id="r-2"))
    # A retry of r-2 (same id) after a lost confirm is dropped, and still confirmed.
    ch.basic_publish("", q, b"now-again", pika.BasicProperties(message_id="r-2"))
    got = []
    deadline = time.monotonic() + 10
    while len(got) < 2 and time.monotonic() < deadline:
        method, _, body = ch.basic_get(q, auto_ack=True)
        if method is None:
            time.sleep(0.02)
            continue
        got.append((body, time.monotonic() - sent))
    assert [b for b, _ in got] == [b"now", b"later"]
    assert got[1][1] >= 0.5
    time.sleep(0.2)
    assert ch.basic_get(q, auto_ack=True)[0] is None
