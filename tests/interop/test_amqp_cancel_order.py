"""Order of a reply and the notifications its method causes, seen through kombu (py-amqp), the
client Celery uses: RabbitMQ answers queue.delete with delete-ok before it sends basic.cancel to
the queue's consumers, and py-amqp relies on it. A consumer without an on_cancel callback
(kombu's default) raises ConsumerCancelled from whatever call is reading when the cancel
arrives, so a cancel ahead of delete-ok makes queue_delete() fail although the queue is gone.
Runs against a real RabbitMQ too with --amqp-url."""

from __future__ import annotations

import time

import pytest
from amqp.exceptions import ConsumerCancelled
from kombu import Connection, Consumer, Producer, Queue
from kombu.asynchronous import Hub

from helpers import unique

pytestmark = pytest.mark.amqp


@pytest.mark.parametrize("deleting_channel", ["consumer's channel", "another channel"])
def test_kombu_event_loop_consumer_acks_from_a_timer_then_deletes_its_queue(
        amqp_url, amqp_is_ferry, request, deleting_channel):
    if deleting_channel == "another channel" and not amqp_is_ferry:
        # RabbitMQ sends another channel's cancel from that channel's own process, so its
        # order against delete-ok is a race there: on 3.10.8 we saw delete-ok first once and
        # basic.cancel first in the next runs. Ferry always answers first, the order py-amqp
        # needs.
        pytest.skip("the other channel's cancel races delete-ok on RabbitMQ")
    conn = Connection(amqp_url, connect_timeout=10)
    conn.connect()
    hub = Hub()
    try:
        q = Queue(unique(f"{request.node.name}-q"), durable=True)
        Producer(conn.channel()).publish("work", routing_key=q.name, declare=[q], retry=False)
        consume_channel = conn.channel()
        delete_channel = (consume_channel if deleting_channel == "consumer's channel"
                          else conn.channel())
        outcome: dict[str, object] = {}

        def ack_then_delete(message):
            # As a Celery worker cleaning up: ack the last task, then delete the queue.
            message.ack()
            try:
                outcome["deleted"] = q(delete_channel).delete()
            except Exception as e:  # noqa: BLE001 - hub timers swallow errors; keep it
                outcome["error"] = e

        def on_message(body, message):
            outcome["body"] = body
            hub.call_later(0.05, ack_then_delete, message)

        consumer = Consumer(consume_channel, [q], callbacks=[on_message], accept=["text/plain"],
                            tag_prefix="cancel-order-")
        consumer.consume()
        conn.register_with_event_loop(hub)
        deadline = time.monotonic() + 10
        cancelled = None
        while cancelled is None and "error" not in outcome and time.monotonic() < deadline:
            try:
                hub.run_once()
            except ConsumerCancelled as e:
                # With no on_cancel callback py-amqp raises the notification from the read
                # that meets it; it must come after queue_delete() returned.
                cancelled = e
                outcome["delete returned before the cancel"] = "deleted" in outcome
        assert outcome.get("body") == "work"
        assert "error" not in outcome, f"queue_delete() failed: {outcome['error']!r}"
        # delete-ok carries the ready count: the one message was acked before the delete.
        assert outcome.get("deleted") == 0
        assert cancelled is not None, "no basic.cancel for the deleted queue's consumer"
        assert "cancel-order-" in str(cancelled)
        assert outcome["delete returned before the cancel"]
    finally:
        hub.close()
        conn.release()
