"""AMQP 0-9-1 cases with pika (BlockingConnection). They describe RabbitMQ's behaviour, so they
also run against a real RabbitMQ with --amqp-url (see the README's "Interop tests")."""

from __future__ import annotations

import time

import pika
import pika.exceptions
import pytest

from amqp_helpers import (assert_empty, bodies, connect, get_all, message_count, name, pump,
                          settle, text)

pytestmark = pytest.mark.amqp


@pytest.fixture
def conn(amqp_url):
    c = connect(amqp_url)
    yield c
    if c.is_open:
        c.close()


@pytest.fixture
def ch(conn):
    return conn.channel()


def _queue(ch, request, suffix="", **arguments):
    q = name(request, suffix)
    ch.queue_declare(q, auto_delete=False, arguments=arguments or None)
    return q


def _cleanup(ch, *queues, exchanges=()):
    for q in queues:
        ch.queue_delete(q)
    for x in exchanges:
        ch.exchange_delete(x)


# --- publisher confirms --------------------------------------------------------------------

def test_publisher_confirms(ch, request):
    q = _queue(ch, request)
    ch.confirm_delivery()
    for i in range(50):
        # With confirms on, BlockingChannel.basic_publish waits for the broker's basic.ack and
        # raises NackError on basic.nack.
        ch.basic_publish("", q, f"m{i}".encode(),
                         pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))
    assert message_count(ch, q) == 50
    # mandatory + unroutable: basic.return (312 NO_ROUTE) before the ack.
    with pytest.raises(pika.exceptions.UnroutableError) as e:
        ch.basic_publish("", name(request, "nowhere"), b"lost", mandatory=True)
    returned = e.value.messages[0]
    assert returned.method.reply_code == 312
    assert returned.body == b"lost"
    assert bodies(ch, q, 50) == [f"m{i}".encode() for i in range(50)]
    _cleanup(ch, q)


# --- routing -------------------------------------------------------------------------------

def test_direct_exchange_routing(ch, request):
    x = name(request, "x")
    ch.exchange_declare(x, "direct")
    qa, qb = _queue(ch, request, "a"), _queue(ch, request, "b")
    ch.queue_bind(qa, x, "red")
    ch.queue_bind(qb, x, "green")
    ch.queue_bind(qb, x, "red")
    for key in ("red", "green", "blue"):
        ch.basic_publish(x, key, key.encode())
    assert sorted(bodies(ch, qa, 1)) == [b"red"]
    assert sorted(bodies(ch, qb, 2)) == [b"green", b"red"]
    assert_empty(ch, qa)
    assert_empty(ch, qb)
    _cleanup(ch, qa, qb, exchanges=[x])


def test_fanout_exchange_routing(ch, request):
    x = name(request, "x")
    ch.exchange_declare(x, "fanout")
    qs = [_queue(ch, request, str(i)) for i in range(3)]
    for q in qs:
        ch.queue_bind(q, x, "ignored")
    ch.basic_publish(x, "any-key", b"hello")
    for q in qs:
        assert bodies(ch, q, 1) == [b"hello"]
        assert_empty(ch, q, settle=0)
    _cleanup(ch, *qs, exchanges=[x])


def test_topic_exchange_wildcards(ch, request):
    x = name(request, "x")
    ch.exchange_declare(x, "topic")
    q1, q2, qall = (_queue(ch, request, s) for s in ("q1", "q2", "all"))
    ch.queue_bind(q1, x, "*.orange.*")
    ch.queue_bind(q2, x, "*.*.rabbit")
    ch.queue_bind(q2, x, "lazy.#")
    ch.queue_bind(qall, x, "#")
    keys = ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox", "lazy.brown.fox",
            "lazy.pink.rabbit", "quick.brown.fox", "orange", "quick.orange.male.rabbit",
            "lazy.orange.male.rabbit", "lazy", "a..b"]
    for k in keys:
        ch.basic_publish(x, k, k.encode())
    expect1 = {b"quick.orange.rabbit", b"lazy.orange.elephant", b"quick.orange.fox"}
    # lazy.pink.rabbit matches both of q2's bindings and still arrives once; "lazy" matches
    # lazy.# because # is zero or more words.
    expect2 = [b"lazy", b"lazy.brown.fox", b"lazy.orange.elephant", b"lazy.orange.male.rabbit",
               b"lazy.pink.rabbit", b"quick.orange.rabbit"]
    assert set(bodies(ch, q1, len(expect1))) == expect1
    assert sorted(bodies(ch, q2, len(expect2))) == expect2
    assert sorted(bodies(ch, qall, len(keys))) == sorted(k.encode() for k in keys)
    for q in (q1, q2, qall):
        assert_empty(ch, q, settle=0.1)
    _cleanup(ch, q1, q2, qall, exchanges=[x])


def test_headers_exchange_all_and_any(ch, request):
    x = name(request, "x")
    ch.exchange_declare(x, "headers")
    qall, qany = _queue(ch, request, "all"), _queue(ch, request, "any")
    ch.queue_bind(qall, x, "", arguments={"x-match": "all", "format": "pdf", "type": "report"})
    ch.queue_bind(qany, x, "", arguments={"x-match": "any", "format": "pdf", "type": "log"})
    cases = {
        b"pdf-report": {"format": "pdf", "type": "report"},          # all, any
        b"pdf-report-extra": {"format": "pdf", "type": "report", "x": 1},  # all, any
        b"pdf": {"format": "pdf"},                                    # any
        b"zip-log": {"format": "zip", "type": "log"},                 # any
        b"zip-report": {"format": "zip", "type": "report"},           # neither
        b"none": None,                                                # neither
    }
    for body, headers in cases.items():
        ch.basic_publish(x, "key-is-ignored", body, pika.BasicProperties(headers=headers))
    assert sorted(bodies(ch, qall, 2)) == [b"pdf-report", b"pdf-report-extra"]
    assert sorted(bodies(ch, qany, 4)) == [b"pdf", b"pdf-report", b"pdf-report-extra",
                                           b"zip-log"]
    assert_empty(ch, qall)
    assert_empty(ch, qany, settle=0)
    _cleanup(ch, qall, qany, exchanges=[x])


# --- dead-lettering, TTL, max-length --------------------------------------------------------

def _dlx_setup(ch, request, **queue_args):
    dlx = name(request, "dlx")
    ch.exchange_declare(dlx, "fanout")
    dlq = _queue(ch, request, "dlq")
    ch.queue_bind(dlq, dlx, "")
    q = _queue(ch, request, "src", **{"x-dead-letter-exchange": dlx, **queue_args})
    return dlx, dlq, q


def _death(props, queue, reason, count=1):
    deaths = props.headers["x-death"]
    assert isinstance(deaths, list) and len(deaths) == 1, deaths
    d = deaths[0]
    assert text(d["queue"]) == queue
    assert text(d["reason"]) == reason
    assert d["count"] == count
    assert text(d["exchange"]) == ""
    assert [text(k) for k in d["routing-keys"]] == [queue]
    assert "time" in d
    assert text(props.headers["x-first-death-queue"]) == queue
    assert text(props.headers["x-first-death-reason"]) == reason
    assert text(props.headers["x-first-death-exchange"]) == ""


def test_dead_letter_on_reject_and_nack(ch, request):
    dlx, dlq, q = _dlx_setup(ch, request)
    ch.basic_publish("", q, b"rejected", pika.BasicProperties(headers={"keep": "me"}))
    ch.basic_publish("", q, b"nacked")
    ch.basic_publish("", q, b"acked")
    (m1, _, b1), (m2, _, b2), (m3, _, b3) = get_all(ch, q, 3, ack=False)
    assert (b1, b2, b3) == (b"rejected", b"nacked", b"acked")
    ch.basic_reject(m1.delivery_tag, requeue=False)
    ch.basic_nack(m2.delivery_tag, multiple=False, requeue=False)
    ch.basic_ack(m3.delivery_tag)
    # Two separate settlements: the order they reach the dead-letter queue is not asserted.
    got = sorted(get_all(ch, dlq, 2), key=lambda t: t[2])
    assert [b for _, _, b in got] == [b"nacked", b"rejected"]
    for method, props, _ in got:
        assert method.routing_key == q  # the original routing key, no x-dead-letter-routing-key
        _death(props, q, "rejected")
    assert text(got[1][1].headers["keep"]) == "me"  # other headers are kept
    assert_empty(ch, dlq)
    assert_empty(ch, q, settle=0)
    _cleanup(ch, q, dlq, exchanges=[dlx])


def test_dead_letter_routing_key_override(ch, request):
    dlx = name(request, "dlx")
    ch.exchange_declare(dlx, "direct")
    dlq = _queue(ch, request, "dlq")
    ch.queue_bind(dlq, dlx, "dead")
    q = _queue(ch, request, "src", **{"x-dead-letter-exchange": dlx,
                                      "x-dead-letter-routing-key": "dead"})
    ch.basic_publish("", q, b"m")
    [(m, _, _)] = get_all(ch, q, 1, ack=False)
    ch.basic_nack(m.delivery_tag, requeue=False)
    [(dm, props, body)] = get_all(ch, dlq, 1)
    assert body == b"m" and dm.routing_key == "dead"
    _death(props, q, "rejected")
    _cleanup(ch, q, dlq, exchanges=[dlx])


def test_dead_letter_on_ttl_expiry(ch, request):
    dlx, dlq, q = _dlx_setup(ch, request, **{"x-message-ttl": 200})
    ch.basic_publish("", q, b"expires")
    [(_, props, body)] = get_all(ch, dlq, 1, timeout=15)
    assert body == b"expires"
    _death(props, q, "expired")
    # RabbitMQ records the queue TTL in x-death as original-expiration only for per-message
    # expiration, so nothing more is asserted about it here.
    assert message_count(ch, q) == 0
    _cleanup(ch, q, dlq, exchanges=[dlx])


def test_message_ttl(ch, request):
    q = _queue(ch, request, **{"x-message-ttl": 500})
    ch.basic_publish("", q, b"fresh")
    assert bodies(ch, q, 1) == [b"fresh"]  # read well within the TTL
    ch.basic_publish("", q, b"stale")
    ch.basic_publish("", q, b"short", pika.BasicProperties(expiration="100"))
    time.sleep(1.0)
    assert_empty(ch, q, settle=0)
    assert message_count(ch, q) == 0
    # Per-message expiration alone (no queue TTL).
    q2 = _queue(ch, request, "per-message")
    ch.basic_publish("", q2, b"gone", pika.BasicProperties(expiration="100"))
    ch.basic_publish("", q2, b"kept")
    time.sleep(0.5)
    assert bodies(ch, q2, 1) == [b"kept"]
    assert_empty(ch, q2, settle=0)
    _cleanup(ch, q, q2)


def test_max_length_drop_head(ch, request):
    dlx, dlq, q = _dlx_setup(ch, request, **{"x-max-length": 3, "x-overflow": "drop-head"})
    ch.confirm_delivery()
    for i in range(1, 6):
        ch.basic_publish("", q, f"m{i}".encode())
    assert message_count(ch, q) == 3
    assert bodies(ch, q, 3) == [b"m3", b"m4", b"m5"]
    dropped = get_all(ch, dlq, 2)
    assert [b for _, _, b in dropped] == [b"m1", b"m2"]
    for _, props, _ in dropped:
        _death(props, q, "maxlen")
    _cleanup(ch, q, dlq, exchanges=[dlx])


def test_max_length_default_overflow_is_drop_head(ch, request):
    q = _queue(ch, request, **{"x-max-length": 2})
    for i in range(1, 5):
        ch.basic_publish("", q, f"m{i}".encode())
    assert bodies(ch, q, 2) == [b"m3", b"m4"]
    assert_empty(ch, q)
    _cleanup(ch, q)


# --- acks, requeue, prefetch --------------------------------------------------------------------

def test_requeue_sets_redelivered(ch, request):
    q = _queue(ch, request)
    ch.basic_publish("", q, b"one")
    ch.basic_publish("", q, b"two")
    m, _, body = get_all(ch, q, 1, ack=False)[0]
    assert body == b"one" and not m.redelivered
    ch.basic_nack(m.delivery_tag, requeue=True)
    m, _, body = get_all(ch, q, 1, ack=False)[0]
    assert body == b"one" and m.redelivered  # requeued to its original position
    ch.basic_reject(m.delivery_tag, requeue=True)
    m, _, body = get_all(ch, q, 1, ack=False)[0]
    assert body == b"one" and m.redelivered
    ch.basic_ack(m.delivery_tag)
    m, _, body = get_all(ch, q, 1)[0]
    assert body == b"two" and not m.redelivered
    _cleanup(ch, q)


def test_unacked_return_on_channel_close(conn, ch, request):
    q = _queue(ch, request)
    ch.basic_publish("", q, b"held")
    other = conn.channel()
    m, _, body = get_all(other, q, 1, ack=False)[0]
    assert body == b"held" and not m.redelivered
    other.close()
    m, _, body = get_all(ch, q, 1)[0]
    assert body == b"held" and m.redelivered
    _cleanup(ch, q)


def test_prefetch_holds_deliveries_until_acks(conn, ch, request):
    q = _queue(ch, request)
    for i in range(6):
        ch.basic_publish("", q, f"m{i}".encode())
    ch.basic_qos(prefetch_count=2)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((m, b)))
    assert pump([conn], lambda: len(got) >= 2)
    settle([conn], 0.5)
    assert [b for _, b in got] == [b"m0", b"m1"], "prefetch 2 must hold the rest back"
    ch.basic_ack(got[0][0].delivery_tag)
    assert pump([conn], lambda: len(got) >= 3)
    settle([conn], 0.3)
    assert len(got) == 3
    ch.basic_ack(got[2][0].delivery_tag, multiple=True)  # acks m1 and m2
    assert pump([conn], lambda: len(got) >= 5)
    settle([conn], 0.3)
    assert [b for _, b in got] == [f"m{i}".encode() for i in range(5)]
    ch.basic_ack(got[-1][0].delivery_tag, multiple=True)
    assert pump([conn], lambda: len(got) >= 6)
    ch.basic_ack(got[-1][0].delivery_tag)
    ch.cancel()
    _cleanup(ch, q)


# --- request/reply ------------------------------------------------------------------------------

def _serve_one(server_ch, rpc_q):
    [(m, props, body)] = get_all(server_ch, rpc_q, 1, ack=False)
    server_ch.basic_publish("", props.reply_to, body.upper(),
                            pika.BasicProperties(correlation_id=props.correlation_id))
    server_ch.basic_ack(m.delivery_tag)
    return props


def test_request_reply_with_reply_queue(amqp_url, conn, ch, request):
    server = connect(amqp_url)
    try:
        sch = server.channel()
        rpc_q = _queue(sch, request, "rpc")
        reply_q = ch.queue_declare("", exclusive=True).method.queue
        assert reply_q.startswith("amq.gen-")
        replies = []
        ch.basic_consume(reply_q, lambda c, m, p, b: replies.append((p, b)), auto_ack=True)
        for cid in ("c-1", "c-2"):
            ch.basic_publish("", rpc_q, f"ping {cid}".encode(),
                             pika.BasicProperties(reply_to=reply_q, correlation_id=cid))
        for _ in range(2):
            props = _serve_one(sch, rpc_q)
            assert props.reply_to == reply_q
        assert pump([conn], lambda: len(replies) >= 2)
        assert sorted((p.correlation_id, b) for p, b in replies) == [
            ("c-1", b"PING C-1"), ("c-2", b"PING C-2")]
        sch.queue_delete(rpc_q)
    finally:
        server.close()


def test_direct_reply_to(amqp_url, conn, ch, request):
    server = connect(amqp_url)
    try:
        sch = server.channel()
        rpc_q = _queue(sch, request, "rpc")
        replies = []
        ch.basic_consume("amq.rabbitmq.reply-to", lambda c, m, p, b: replies.append((p, b)),
                         auto_ack=True)
        ch.basic_publish("", rpc_q, b"hello",
                         pika.BasicProperties(reply_to="amq.rabbitmq.reply-to",
                                              correlation_id="abc"))
        props = _serve_one(sch, rpc_q)
        # The broker rewrites reply_to into a per-channel pseudo-queue name.
        assert props.reply_to.startswith("amq.rabbitmq.reply-to.")
        assert pump([conn], lambda: len(replies) >= 1)
        [(p, b)] = replies
        assert (p.correlation_id, b) == ("abc", b"HELLO")
        sch.queue_delete(rpc_q)
    finally:
        server.close()


@pytest.mark.parametrize("passive", [True, False], ids=["passive", "active"])
def test_declare_direct_reply_to_pseudo_queue(ch, passive):
    ok = ch.queue_declare("amq.rabbitmq.reply-to", passive=passive)
    assert ok.method.queue == "amq.rabbitmq.reply-to"
    assert ok.method.message_count == 0


def test_direct_reply_to_needs_auto_ack_consumer(ch, request):
    q = _queue(ch, request)
    # Publishing with reply_to amq.rabbitmq.reply-to without consuming from it: 406.
    ch.basic_publish("", q, b"x", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(q, passive=True)  # a synchronous call to see the channel close
    assert e.value.reply_code == 406


# --- competing consumers, exclusive queues --------------------------------------------------------

def test_competing_consumers_each_message_once(amqp_url, conn, ch, request):
    q = _queue(ch, request)
    other = connect(amqp_url)
    try:
        och = other.channel()
        got = {"a": [], "b": []}

        def consumer(who, channel):
            def on_message(c, m, p, b):
                got[who].append(b)
                c.basic_ack(m.delivery_tag)
            channel.basic_qos(prefetch_count=1)
            channel.basic_consume(q, on_message)

        consumer("a", ch)
        consumer("b", och)
        pub = conn.channel()
        n = 40
        for i in range(n):
            pub.basic_publish("", q, f"m{i}".encode())
        assert pump([conn, other], lambda: len(got["a"]) + len(got["b"]) >= n, timeout=20)
        settle([conn, other], 0.3)
        allb = got["a"] + got["b"]
        assert sorted(allb) == sorted(f"m{i}".encode() for i in range(n)), "each message once"
        assert got["a"] and got["b"], f"both consumers get work: {len(got['a'])}/{len(got['b'])}"
        ch.cancel()
        och.cancel()
    finally:
        other.close()
    _cleanup(ch, q)


def test_exclusive_queue_is_locked_for_other_connections(amqp_url, conn, ch, request):
    q = name(request)
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"mine")
    other = connect(amqp_url)
    try:
        och = other.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            och.basic_consume(q, lambda *a: None)
        assert e.value.reply_code == 405  # RESOURCE_LOCKED
        och = other.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            och.queue_declare(q, exclusive=True)
        assert e.value.reply_code == 405
        assert other.is_open
        # The owner still uses it; when the owner's connection closes the queue is deleted.
        assert bodies(ch, q, 1) == [b"mine"]
        conn.close()
        och = other.channel()

        def gone():
            try:
                other.channel().queue_declare(q, passive=True)
            except pika.exceptions.ChannelClosedByBroker as err:
                return err.reply_code == 404
            return False
        from helpers import wait_for
        wait_for("the exclusive queue to be deleted with its connection", gone, timeout=10,
                 interval=0.1)
    finally:
        other.close()


# --- large messages, errors ---------------------------------------------------------------------

def test_large_messages_span_frames(conn, ch, request):
    q = _queue(ch, request)
    ch.confirm_delivery()
    frame_max = conn._impl.params.frame_max
    sizes = [5 * 1024 * 1024 + 7, 3 * 1024 * 1024, frame_max - 8, frame_max - 7, 0]
    pattern = bytes(range(251))
    payloads = [(pattern[k:] + pattern[:k]) * (n // 251) + pattern[:n % 251]
                for k, n in enumerate(sizes)]
    for p in payloads:
        ch.basic_publish("", q, p, pika.BasicProperties(content_type="application/octet-stream",
                                                        headers={"size": len(p)}))
    got = get_all(ch, q, len(payloads), timeout=30)
    assert len(got) == len(payloads)
    for (_, props, body), p in zip(got, payloads):
        assert len(body) == len(p) and body == p
        assert props.headers["size"] == len(p)
        assert props.content_type == "application/octet-stream"
    _cleanup(ch, q)


def test_passive_declare_of_missing_queue_closes_channel_only(conn, ch, request):
    missing = name(request, "missing")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(missing, passive=True)
    assert e.value.reply_code == 404  # NOT_FOUND
    assert "NOT_FOUND" in e.value.reply_text
    assert not ch.is_open
    assert conn.is_open
    ch2 = conn.channel()
    q = _queue(ch2, request)
    ch2.basic_publish("", q, b"still works")
    assert bodies(ch2, q, 1) == [b"still works"]
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch2.exchange_declare(name(request, "missing-x"), "direct", passive=True)
    assert e.value.reply_code == 404
    ch3 = conn.channel()
    ch3.queue_delete(q)


# --- ordering within a channel ------------------------------------------------------------------

def test_get_after_publish_on_same_channel_sees_message(ch, request):
    q = _queue(ch, request)
    misses = 0
    for i in range(20):
        ch.basic_publish("", q, f"m{i}".encode())
        m, _, body = ch.basic_get(q, auto_ack=True)
        if m is None:
            misses += 1
            bodies(ch, q, 1)  # drain it before the next round
        else:
            assert body == f"m{i}".encode()
    assert misses == 0, f"{misses} of 20 basic.get calls right after a publish were get-empty"
    _cleanup(ch, q)


# --- more reliability and properties --------------------------------------------------------

def test_x_death_count_grows_on_repeated_dead_lettering(ch, request):
    # The queue dead-letters into a fanout exchange that routes back to the queue itself: each
    # reject adds to the same x-death entry's count (RabbitMQ allows such cycles for rejects).
    dlx = name(request, "dlx")
    ch.exchange_declare(dlx, "fanout")
    q = _queue(ch, request, **{"x-dead-letter-exchange": dlx})
    ch.queue_bind(q, dlx, "")
    ch.basic_publish("", q, b"again")
    for count in (1, 2, 3):
        [(m, props, body)] = get_all(ch, q, 1, ack=False)
        assert body == b"again"
        if count > 1:
            _death(props, q, "rejected", count=count - 1)
        ch.basic_reject(m.delivery_tag, requeue=False)
    [(m, props, _)] = get_all(ch, q, 1)
    _death(props, q, "rejected", count=3)
    _cleanup(ch, q, exchanges=[dlx])


def test_reject_publish_overflow_nacks_confirms(ch, request):
    q = _queue(ch, request, **{"x-max-length": 2, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"1")
    ch.basic_publish("", q, b"2")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"3")
    assert bodies(ch, q, 2) == [b"1", b"2"]
    ch.basic_publish("", q, b"4")  # room again
    assert bodies(ch, q, 1) == [b"4"]
    _cleanup(ch, q)


def test_basic_properties_round_trip(ch, request):
    import datetime
    import decimal
    q = _queue(ch, request)
    headers = {"str": "text", "int": 42, "neg": -7, "big": 2 ** 40, "bool": True,
               "list": [1, "two", False], "table": {"nested": "yes", "n": 1},
               "bytes": b"\x00\xff", "decimal": decimal.Decimal("3.14"),
               "ts": datetime.datetime(2024, 1, 2, 3, 4, 5)}
    props = pika.BasicProperties(
        content_type="application/json", content_encoding="gzip", headers=headers,
        delivery_mode=2, priority=5, correlation_id="corr", reply_to="replies",
        expiration="60000", message_id="msg-1", timestamp=1_700_000_000, type="order.created",
        user_id="guest", app_id="interop")
    ch.basic_publish("", q, b"{}", props)
    [(_, got, body)] = get_all(ch, q, 1)
    assert body == b"{}"
    for attr in ("content_type", "content_encoding", "delivery_mode", "priority",
                 "correlation_id", "reply_to", "expiration", "message_id", "timestamp", "type",
                 "user_id", "app_id"):
        assert getattr(got, attr) == getattr(props, attr), attr
    h = got.headers
    assert text(h["str"]) == "text"
    assert (h["int"], h["neg"], h["big"], h["bool"]) == (42, -7, 2 ** 40, True)
    assert [text(v) if isinstance(v, (str, bytes)) else v for v in h["list"]] == [1, "two",
                                                                                   False]
    assert text(h["table"]["nested"]) == "yes" and h["table"]["n"] == 1
    assert h["bytes"] == b"\x00\xff"
    assert h["decimal"] == decimal.Decimal("3.14")
    assert h["ts"].replace(tzinfo=None) == datetime.datetime(2024, 1, 2, 3, 4, 5)
    _cleanup(ch, q)


def test_user_id_must_match_the_connection_user(ch, request):
    q = _queue(ch, request)
    ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="mallory"))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(q, passive=True)
    assert e.value.reply_code == 406  # PRECONDITION_FAILED


def test_publish_to_missing_exchange_closes_channel_404(conn, ch, request):
    ch.basic_publish(name(request, "no-such-exchange"), "k", b"x")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(name(request, "after"), passive=False, auto_delete=True)
    assert e.value.reply_code == 404
    assert conn.is_open and conn.channel().is_open


def test_alternate_exchange_and_exchange_to_exchange_bindings(ch, request):
    ae, src, dst = name(request, "ae"), name(request, "src"), name(request, "dst")
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(src, "direct", arguments={"alternate-exchange": ae})
    ch.exchange_declare(dst, "topic")
    ch.exchange_bind(destination=dst, source=src, routing_key="orders.eu")
    q_unrouted, q_dst = _queue(ch, request, "unrouted"), _queue(ch, request, "dst")
    ch.queue_bind(q_unrouted, ae, "")
    ch.queue_bind(q_dst, dst, "orders.*")
    ch.basic_publish(src, "orders.eu", b"routed via e2e")
    ch.basic_publish(src, "orders.us", b"to the alternate exchange")
    assert bodies(ch, q_dst, 1) == [b"routed via e2e"]
    assert bodies(ch, q_unrouted, 1) == [b"to the alternate exchange"]
    assert_empty(ch, q_dst, settle=0.1)
    assert_empty(ch, q_unrouted, settle=0)
    ch.exchange_unbind(destination=dst, source=src, routing_key="orders.eu")
    ch.basic_publish(src, "orders.eu", b"now unrouted")
    assert bodies(ch, q_unrouted, 1) == [b"now unrouted"]
    _cleanup(ch, q_unrouted, q_dst, exchanges=[src, dst, ae])


def test_nack_multiple_and_recover(ch, request):
    q = _queue(ch, request)
    for i in range(4):
        ch.basic_publish("", q, f"m{i}".encode())
    got = get_all(ch, q, 4, ack=False)
    ch.basic_nack(got[2][0].delivery_tag, multiple=True, requeue=True)  # m0..m2 back
    again = get_all(ch, q, 3, ack=False)
    assert sorted(b for _, _, b in again) == [b"m0", b"m1", b"m2"]
    assert all(m.redelivered for m, _, _ in again)
    ch.basic_recover(requeue=True)  # everything unacked (m3 and the three above) comes back
    back = get_all(ch, q, 4)
    assert sorted(b for _, _, b in back) == [b"m0", b"m1", b"m2", b"m3"]
    assert all(m.redelivered for m, _, _ in back)
    _cleanup(ch, q)


def test_server_cancels_consumer_when_queue_is_deleted(amqp_url, conn, ch, request):
    q = _queue(ch, request)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume(q, lambda *a: None)
    other = connect(amqp_url)
    try:
        other.channel().queue_delete(q)
    finally:
        other.close()
    assert pump([conn], lambda: bool(cancelled))
    assert cancelled == [tag]
    assert ch.is_open
