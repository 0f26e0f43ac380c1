"""An event published over Ferry's native protocol (`ferry publish`, QUIC) reaches
confluent-kafka and pika consumers with the same id, type, source, correlation id and trace
context. (The other direction, a confluent-kafka/rdkafka record with ce_* headers reaching an
SDK handler, is tests/native_sdk.rs.)"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from confluent_kafka import Consumer

from amqp_helpers import connect, get_all, name, text

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(autouse=True)
def _ferry_only(request):
    if request.config.getoption("--kafka-bootstrap") or request.config.getoption("--amqp-url"):
        pytest.skip("native protocol case: needs the spawned Ferry")


def _publish_native(ferry_bin, broker, *args: str) -> dict:
    out = subprocess.run(
        [str(ferry_bin), "publish", "--native-addr", broker.native_addr,
         "--cert-file", str(broker.data_dir / "native" / "cert.pem"), *args],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_native_event_metadata_reaches_kafka_and_amqp(request, ferry_bin, broker, amqp_url,
                                                      new_topic):
    topic = new_topic()
    conn = connect(amqp_url)
    ch = conn.channel()
    q = name(request, "q")
    ch.queue_declare(q, auto_delete=False)
    ch.queue_bind(q, topic, routing_key="#")

    receipt = _publish_native(
        ferry_bin, broker, "-t", topic, "-k", "order-7", "--type", "order.placed",
        "--source", "/shop", "--correlation-id", "corr-7", "--traceparent", TRACEPARENT,
        "-H", "tenant=acme", '{"order": 7}')
    assert receipt["partition"] == 0 and receipt["offset"] == 0, receipt
    event_id = receipt["id"]

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": name(request, "g"),
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    deadline = time.monotonic() + 20
    msg = None
    try:
        while msg is None and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                msg = m
    finally:
        c.close()
    assert msg is not None, "no Kafka record"
    headers = {k: v.decode() for k, v in msg.headers()}
    assert headers["ce_id"] == event_id
    assert headers["ce_type"] == "order.placed"
    assert headers["ce_source"] == "/shop"
    assert headers["ce_specversion"] == "1.0"
    assert headers["traceparent"] == TRACEPARENT
    assert headers["correlation-id"] == "corr-7"
    assert headers["tenant"] == "acme"
    assert msg.key() == b"order-7"
    assert json.loads(msg.value()) == {"order": 7}

    [(method, props, body)] = get_all(ch, q, expect=1)
    assert props.message_id == event_id
    assert props.correlation_id == "corr-7"
    assert text(props.headers["traceparent"]) == TRACEPARENT
    assert text(props.headers["tenant"]) == "acme"
    assert json.loads(body) == {"order": 7}
    conn.close()
