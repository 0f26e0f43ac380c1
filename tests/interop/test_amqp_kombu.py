"""AMQP 0-9-1 cases with kombu (on py-amqp), the client Celery uses. They describe RabbitMQ's
behaviour, so they also run against a real RabbitMQ with --amqp-url."""

from __future__ import annotations

import socket
import time

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from amqp_helpers import text
from helpers import unique

pytestmark = pytest.mark.amqp


@pytest.fixture
def kconn(amqp_url):
    c = Connection(amqp_url, transport_options={"confirm_publish": True}, connect_timeout=10)
    c.connect()
    yield c
    c.release()


def _name(request, suffix):
    return unique(f"{request.node.name}-{suffix}")


def _collect(conn, queues, expect, timeout=10.0, ack=True, no_ack=False):
    """Consumes from `queues` until `expect` messages arrived; returns (body, message) pairs."""
    got = []

    def on_message(body, message):
        got.append((body, message))
        if ack and not no_ack:
            message.ack()

    with Consumer(conn.channel(), queues, callbacks=[on_message], no_ack=no_ack,
                  accept=["json", "text/plain", "application/data"]):
        deadline = time.monotonic() + timeout
        while len(got) < expect and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.1)
            except socket.timeout:
                pass
    return got


def test_kombu_confirmed_publish_roundtrip(kconn, request):
    x = Exchange(_name(request, "x"), "direct", durable=True)
    q = Queue(_name(request, "q"), x, routing_key="orders", durable=True)
    producer = Producer(kconn.channel())
    for i in range(10):
        # confirm_publish: publish returns only after the broker's basic.ack.
        producer.publish({"n": i, "text": "héllo"}, exchange=x, routing_key="orders",
                         declare=[q], serializer="json", delivery_mode=2,
                         headers={"trace": f"t-{i}"}, correlation_id=f"c-{i}",
                         retry=False)
    got = _collect(kconn, [q], 10)
    assert [b for b, _ in got] == [{"n": i, "text": "héllo"} for i in range(10)]
    for i, (_, m) in enumerate(got):
        assert m.content_type == "application/json"
        assert text(m.headers["trace"]) == f"t-{i}"
        assert m.properties["correlation_id"] == f"c-{i}"
        assert m.delivery_info["routing_key"] == "orders"
        assert m.delivery_info["exchange"] == x.name
        assert m.properties["delivery_mode"] == 2
    q(kconn.channel()).delete()
    x(kconn.channel()).delete()


def test_kombu_topic_and_headers_routing(kconn, request):
    topic = Exchange(_name(request, "topic"), "topic", durable=False)
    hdrs = Exchange(_name(request, "headers"), "headers", durable=False)
    q_star = Queue(_name(request, "star"), topic, routing_key="stock.*.nyse", durable=False)
    q_hash = Queue(_name(request, "hash"), topic, routing_key="stock.#", durable=False)
    q_any = Queue(_name(request, "any"), hdrs, durable=False,
                  binding_arguments={"x-match": "any", "region": "eu", "tier": "gold"})
    q_all = Queue(_name(request, "all"), hdrs, durable=False,
                  binding_arguments={"x-match": "all", "region": "eu", "tier": "gold"})
    queues = [q_star, q_hash, q_any, q_all]
    ch = kconn.channel()
    for q in queues:
        q(ch).declare()
    p = Producer(ch)
    for key in ("stock.ibm.nyse", "stock.ibm.nasdaq", "stock", "stock.a.b.nyse", "bond.x.nyse"):
        p.publish(key, exchange=topic, routing_key=key, serializer=None,
                  content_type="text/plain", content_encoding="utf-8", retry=False)
    for body, headers in (("eu-gold", {"region": "eu", "tier": "gold"}),
                          ("eu", {"region": "eu"}), ("us-silver", {"region": "us",
                                                                  "tier": "silver"})):
        p.publish(body, exchange=hdrs, routing_key="", headers=headers, serializer=None,
                  content_type="text/plain", content_encoding="utf-8", retry=False)
    assert [b for b, _ in _collect(kconn, [q_star], 1)] == ["stock.ibm.nyse"]
    assert sorted(b for b, _ in _collect(kconn, [q_hash], 4)) == [
        "stock", "stock.a.b.nyse", "stock.ibm.nasdaq", "stock.ibm.nyse"]
    assert sorted(b for b, _ in _collect(kconn, [q_any], 2)) == ["eu", "eu-gold"]
    assert [b for b, _ in _collect(kconn, [q_all], 1)] == ["eu-gold"]
    time.sleep(0.2)
    for q in queues:
        assert q(ch).get(no_ack=True) is None, f"{q.name} holds more than it should"
        q(ch).delete()
    topic(ch).delete()
    hdrs(ch).delete()


def test_kombu_reject_dead_letters_with_x_death(kconn, request):
    dlx = Exchange(_name(request, "dlx"), "direct", durable=False)
    dlq = Queue(_name(request, "dlq"), dlx, routing_key="dead", durable=False)
    src = Queue(_name(request, "src"), durable=False,
                queue_arguments={"x-dead-letter-exchange": dlx.name,
                                 "x-dead-letter-routing-key": "dead"})
    ch = kconn.channel()
    dlq(ch).declare()
    src(ch).declare()
    Producer(ch).publish({"job": 1}, routing_key=src.name, serializer="json", retry=False)
    [(body, m)] = _collect(kconn, [src], 1, ack=False)
    assert body == {"job": 1}
    m.reject(requeue=False)
    [(body, dm)] = _collect(kconn, [dlq], 1)
    assert body == {"job": 1}
    [death] = dm.headers["x-death"]
    assert text(death["queue"]) == src.name
    assert text(death["reason"]) == "rejected"
    assert death["count"] == 1
    assert [text(k) for k in death["routing-keys"]] == [src.name]
    assert dm.delivery_info["routing_key"] == "dead"
    src(ch).delete()
    dlq(ch).delete()
    dlx(ch).delete()


def test_kombu_requeue_redelivers(kconn, request):
    q = Queue(_name(request, "q"), durable=False)
    ch = kconn.channel()
    q(ch).declare()
    Producer(ch).publish("work", routing_key=q.name, serializer=None, content_type="text/plain",
                         content_encoding="utf-8", retry=False)
    [(_, m)] = _collect(kconn, [q], 1, ack=False)
    assert not m.delivery_info["redelivered"]
    m.requeue()
    [(body, m)] = _collect(kconn, [q], 1)
    assert body == "work" and m.delivery_info["redelivered"]
    q(ch).delete()


def test_kombu_rpc_with_direct_reply_to(kconn, amqp_url, request):
    rpc_q = Queue(_name(request, "rpc"), durable=False)
    ch = kconn.channel()
    rpc_q(ch).declare()
    reply_queue = Queue("amq.rabbitmq.reply-to", no_ack=True)
    replies = []
    with Consumer(ch, [reply_queue], no_ack=True,
                  callbacks=[lambda body, m: replies.append((body, m))], accept=["json"]):
        # The request goes out on the consuming channel, as direct reply-to requires.
        Producer(ch).publish({"x": 20}, routing_key=rpc_q.name, serializer="json",
                             reply_to="amq.rabbitmq.reply-to", correlation_id="req-1",
                             retry=False)
        with Connection(amqp_url) as server:
            [(body, req)] = _collect(server, [rpc_q], 1)
            reply_to = req.properties["reply_to"]
            assert reply_to.startswith("amq.rabbitmq.reply-to.")
            Producer(server.channel()).publish(
                {"y": body["x"] + 1}, routing_key=reply_to, serializer="json",
                correlation_id=req.properties["correlation_id"], retry=False)
        deadline = time.monotonic() + 10
        while not replies and time.monotonic() < deadline:
            try:
                kconn.drain_events(timeout=0.1)
            except socket.timeout:
                pass
    [(body, m)] = replies
    assert body == {"y": 21}
    assert m.properties["correlation_id"] == "req-1"
    rpc_q(kconn.channel()).delete()


def test_kombu_simple_queue_prefetch_and_competing(kconn, amqp_url, request):
    name = _name(request, "q")
    ch = kconn.channel()
    Queue(name, durable=False)(ch).declare()
    p = Producer(ch)
    for i in range(6):
        p.publish(i, routing_key=name, serializer="json", retry=False)
    with Connection(amqp_url) as other:
        a, b = [], []
        ca = Consumer(kconn.channel(), [Queue(name, durable=False)], accept=["json"],
                      callbacks=[lambda body, m: a.append(m)])
        cb = Consumer(other.channel(), [Queue(name, durable=False)], accept=["json"],
                      callbacks=[lambda body, m: b.append(m)])
        ca.qos(prefetch_count=2)
        cb.qos(prefetch_count=2)
        ca.consume()
        cb.consume()

        def pump(seconds):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                for c in (kconn, other):
                    try:
                        c.drain_events(timeout=0.05)
                    except socket.timeout:
                        pass

        pump(0.8)
        # Each consumer holds at most its prefetch of unacked messages: 2 + 2 of 6.
        assert (len(a), len(b)) == (2, 2)
        for m in a + b:
            m.ack()
        pump(0.8)
        assert len(a) + len(b) == 6
        for m in a[2:] + b[2:]:
            m.ack()
        assert sorted(m.payload for m in a + b) == list(range(6))
        ca.cancel()
        cb.cancel()
    Queue(name, durable=False)(kconn.channel()).delete()
