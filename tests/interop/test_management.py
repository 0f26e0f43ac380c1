"""The management API with real clients: a pika connection is listed under its
connection_name, and closing it through `DELETE /api/connections/{name}` with an `X-Reason`
header reaches pika as RabbitMQ's forced close (320 CONNECTION_FORCED with the reason)."""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
import urllib.request

import pika
import pika.exceptions
import pytest

import helpers


def _api(broker, method: str, path: str, headers: dict[str, str] | None = None):
    request = urllib.request.Request(f"{broker.http}{path}", method=method)
    token = base64.b64encode(b"admin:admin").decode()
    request.add_header("Authorization", f"Basic {token}")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
        return response.status, (json.loads(body) if body else None)


def test_pika_connection_listed_and_closed_with_reason(ferry):
    connection_name = helpers.unique("billing-worker")
    params = pika.URLParameters(f"amqp://guest:guest@{ferry.amqp_addr}/%2f")
    params.client_properties = {"connection_name": connection_name}
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=5)
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_consume(queue, lambda *_: None, consumer_tag="pika-consumer")

        _, connections = _api(ferry, "GET", "/api/connections")
        mine = [c for c in connections if c["client_name"] == connection_name]
        assert len(mine) == 1, connections
        listed = mine[0]
        assert listed["protocol"] == "amqp"
        assert listed["user"] == "guest"
        assert listed["client_properties"]["connection_name"] == connection_name
        assert listed["channels"] == 1

        _, consumers = _api(ferry, "GET", "/api/consumers")
        ours = [c for c in consumers if c["channel_details"]["connection_name"] == listed["name"]]
        assert [(c["consumer_tag"], c["queue"]["name"], c["prefetch_count"]) for c in ours] == \
            [("pika-consumer", queue, 5)]

        path = "/api/connections/" + urllib.parse.quote(listed["name"], safe="")
        status, _ = _api(ferry, "DELETE", path, {"X-Reason": "node maintenance"})
        assert status == 204

        deadline = time.monotonic() + 10
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            while time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.2)
        assert closed.value.reply_code == 320
        assert closed.value.reply_text == "CONNECTION_FORCED - node maintenance"
    finally:
        if conn.is_open:
            conn.close()
