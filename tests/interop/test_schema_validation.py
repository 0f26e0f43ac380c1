"""Validation on publish: a topic with `ferry.schema.validation=true` takes only records in
the schema registry's wire format whose schema is registered under `<topic>-value` and whose
payload decodes against it. confluent-kafka sees anything else refused with INVALID_RECORD
(87), and `ferry_schema_rejections_total` counts it; valid records written by the Avro
serializer go through."""

from __future__ import annotations

import struct
import urllib.request

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

import helpers

ORDER = ('{"type": "record", "name": "Order", "namespace": "shop", "fields": '
         '[{"name": "id", "type": "long"}, {"name": "item", "type": "string"}]}')


@pytest.fixture
def registry(ferry) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": ferry.http, "basic.auth.user.info": "admin:admin"})


def _produce(ferry, topic: str, values: list[bytes]) -> list:
    """Produces each value on its own (one record per batch) and returns each delivery error."""
    producer = Producer({"bootstrap.servers": ferry.bootstrap, "linger.ms": 0,
                         "message.send.max.retries": 0})
    errors: list = []
    for value in values:
        producer.produce(topic, value=value, on_delivery=lambda err, msg: errors.append(err))
        producer.flush(30)
    assert len(errors) == len(values)
    return errors


def _consume_all(ferry, topic: str, expected: int) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": ferry.bootstrap, "group.id": helpers.unique("v"),
                         "auto.offset.reset": "earliest", "enable.partition.eof": True})
    consumer.subscribe([topic])
    values = []
    try:
        for _ in range(600):
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF and len(values) >= expected:
                    break
                continue
            values.append(msg.value())
    finally:
        consumer.close()
    return values


def test_invalid_records_are_refused_with_invalid_record(ferry, registry):
    topic = helpers.unique("validated")
    helpers.create_topic(AdminClient({"bootstrap.servers": ferry.bootstrap}), topic,
                         config={"ferry.schema.validation": "true"})
    serializer = AvroSerializer(registry, ORDER)
    good = serializer({"id": 1, "item": "book"}, SerializationContext(topic, MessageField.VALUE))
    schema_id = struct.unpack(">I", good[1:5])[0]
    other_id = registry.register_schema(helpers.unique("elsewhere") + "-value",
                                        Schema('"string"', "AVRO"))
    values = [
        good,
        b"plain text, no wire format",
        b"\x00" + struct.pack(">I", schema_id) + b"\xff\xff\xff",   # does not decode
        b"\x00" + struct.pack(">I", 999999),                          # unknown id
        b"\x00" + struct.pack(">I", other_id) + b"\x02a",            # another subject's schema
    ]
    errors = _produce(ferry, topic, values)
    assert errors[0] is None
    for err in errors[1:]:
        assert err is not None and err.code() == KafkaError.INVALID_RECORD, err
    # Only the valid record was stored.
    assert _consume_all(ferry, topic, 1) == [good]

    with urllib.request.urlopen(f"{ferry.http}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    lines = [line for line in metrics.splitlines()
             if line.startswith("ferry_schema_rejections_total") and topic in line]
    reasons = {line.split('reason="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
               for line in lines}
    assert reasons == {"wire_format": 1.0, "decode": 1.0, "unknown_schema": 1.0,
                       "wrong_subject": 1.0}, lines


def test_topics_without_validation_take_any_bytes(ferry):
    topic = helpers.unique("unvalidated")
    helpers.create_topic(AdminClient({"bootstrap.servers": ferry.bootstrap}), topic)
    assert _produce(ferry, topic, [b"anything at all"]) == [None]


# Not marked `amqp`: schema validation is Ferry's, so these run against Ferry's own listener
# even when --amqp-url points the RabbitMQ-behaviour cases at another broker.
def test_pika_sees_a_nack_for_a_message_its_schema_refuses(ferry, registry):
    amqp_url = f"amqp://guest:guest@{ferry.amqp_addr}/%2f"
    import json

    import pika
    import pika.exceptions

    exchange = helpers.unique("validated-ex")
    registry.register_schema(f"{exchange}-value", Schema(json.dumps({
        "type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}),
        "JSON"))
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.exchange_declare(exchange, "fanout",
                                 arguments={"x-schema-validation": True})
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, exchange)
        channel.confirm_delivery()
        json_props = pika.BasicProperties(content_type="application/json",
                                          headers={"schema-version": "1"})
        channel.basic_publish(exchange, "", b'{"id": 1}', json_props)
        for body, props in [
            (b'{"id": "one"}', json_props),                                     # wrong type
            (b'{"name": "x"}', json_props),                                     # missing id
            (b"not json", json_props),
            (b'{"id": 2}', pika.BasicProperties(content_type="text/plain")),     # content type
            (b'{"id": 3}', pika.BasicProperties(headers={"schema-version": "7"})),  # no such version
        ]:
            with pytest.raises(pika.exceptions.NackError):
                channel.basic_publish(exchange, "", body, props)
        # CloudEvents' dataschema can name the subject and version itself.
        channel.basic_publish(exchange, "", b'{"id": 4}', pika.BasicProperties(
            content_type="application/json",
            headers={"cloudEvents:dataschema": f"{ferry.http}/subjects/{exchange}-value/versions/1",
                     "cloudEvents:type": "order.created"}))
        bodies = []
        for _ in range(10):
            method, _, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                break
            bodies.append(body)
        assert bodies == [b'{"id": 1}', b'{"id": 4}']
    finally:
        connection.close()


def test_a_refused_message_is_dead_lettered_with_reason_schema(ferry, registry):
    amqp_url = f"amqp://guest:guest@{ferry.amqp_addr}/%2f"
    import json

    import pika

    exchange = helpers.unique("validated-dlx")
    dlx = helpers.unique("schema-dlx")
    registry.register_schema(f"{exchange}-value", Schema(json.dumps({
        "type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}),
        "JSON"))
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.exchange_declare(dlx, "fanout")
        dead = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(dead, dlx)
        channel.exchange_declare(exchange, "direct", arguments={
            "x-schema-validation": "dead-letter", "x-dead-letter-exchange": dlx})
        good = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(good, exchange, "orders")
        channel.confirm_delivery()
        props = pika.BasicProperties(content_type="application/json")
        # Both confirmed: the refused one once its dead letter is stored.
        channel.basic_publish(exchange, "orders", b'{"id": 1}', props)
        channel.basic_publish(exchange, "orders", b'{"id": "one"}', props)

        method, _, body = channel.basic_get(good, auto_ack=True)
        assert body == b'{"id": 1}'
        assert channel.basic_get(good, auto_ack=True)[0] is None

        method, dead_props, body = channel.basic_get(dead, auto_ack=True)
        assert method is not None, "the refused message was not dead-lettered"
        assert body == b'{"id": "one"}'
        death = dead_props.headers["x-death"][0]
        assert death["reason"] == "schema"
        assert death["exchange"] == exchange
        assert death["routing-keys"] == ["orders"]
        assert dead_props.headers["x-first-death-reason"] == "schema"
        assert dead_props.headers["x-schema-error"]
        assert channel.basic_get(dead, auto_ack=True)[0] is None
    finally:
        connection.close()
