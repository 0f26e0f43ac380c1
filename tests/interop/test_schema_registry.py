"""Ferry's Confluent-compatible schema registry with confluent-kafka's own serdes: the Avro,
JSON Schema and Protobuf serializers register their schemas through `SchemaRegistryClient`
against Ferry's HTTP listener, produce through Ferry's Kafka listener, and the matching
deserializers fetch the writer schema by the id in each record. Registry errors carry
Confluent's codes (40401, 40402, 42201, ...)."""

from __future__ import annotations

import struct

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import (
    Schema,
    SchemaRegistryClient,
    record_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

import helpers

ORDER_AVRO = """
{"type": "record", "name": "Order", "namespace": "shop",
 "fields": [{"name": "id", "type": "long"}, {"name": "item", "type": "string"}]}
"""

ORDER_JSON = """
{"$schema": "http://json-schema.org/draft-07/schema#", "title": "Order", "type": "object",
 "properties": {"id": {"type": "integer"}, "item": {"type": "string"}},
 "required": ["id", "item"]}
"""


@pytest.fixture
def registry(ferry) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": ferry.http, "basic.auth.user.info": "admin:admin"})


def _order_message_class():
    """A protobuf `shop.Order` class built from a descriptor (no protoc needed)."""
    file = descriptor_pb2.FileDescriptorProto(name="shop/order.proto", package="shop",
                                              syntax="proto3")
    message = file.message_type.add(name="Order")
    message.field.add(name="id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    message.field.add(name="item", number=2,
                      type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("shop.Order"))


def _round_trip(ferry, topic: str, serializer, deserializer, values: list) -> list:
    """Produces `values` serialized to `topic` through Ferry and consumes them back."""
    helpers.create_topic(AdminClient({"bootstrap.servers": ferry.bootstrap}), topic)
    producer = Producer({"bootstrap.servers": ferry.bootstrap})
    wire = []
    for value in values:
        data = serializer(value, SerializationContext(topic, MessageField.VALUE))
        wire.append(data)
        producer.produce(topic, value=data)
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": ferry.bootstrap, "group.id": helpers.unique("sr"),
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    received = []
    try:
        for _ in range(600):
            if len(received) == len(values):
                break
            msg = consumer.poll(0.1)
            if msg is None or msg.error():
                continue
            received.append(deserializer(msg.value(),
                                         SerializationContext(topic, MessageField.VALUE)))
    finally:
        consumer.close()
    # Confluent's wire format: magic byte 0, then the big-endian schema id.
    ids = {struct.unpack(">bI", data[:5]) for data in wire}
    assert len(ids) == 1 and next(iter(ids))[0] == 0
    return received


def test_avro_serializer_round_trip_through_ferry(ferry, registry):
    topic = helpers.unique("sr-avro")
    orders = [{"id": i, "item": f"book-{i}"} for i in range(5)]
    received = _round_trip(ferry, topic, AvroSerializer(registry, ORDER_AVRO),
                           AvroDeserializer(registry), orders)
    assert received == orders
    latest = registry.get_latest_version(f"{topic}-value")
    assert latest.version == 1
    assert latest.schema.schema_type == "AVRO"
    assert registry.get_subjects().count(f"{topic}-value") == 1
    # The same schema under another subject keeps its id.
    other = registry.register_schema(f"{topic}-other", Schema(ORDER_AVRO, "AVRO"))
    assert other == latest.schema_id


def test_json_schema_serializer_round_trip_through_ferry(ferry, registry):
    topic = helpers.unique("sr-json")
    orders = [{"id": i, "item": f"pen-{i}"} for i in range(5)]
    received = _round_trip(ferry, topic, JSONSerializer(ORDER_JSON, registry),
                           JSONDeserializer(None, schema_registry_client=registry), orders)
    assert received == orders
    assert registry.get_latest_version(f"{topic}-value").schema.schema_type == "JSON"
    # A payload the schema refuses never leaves the serializer.
    with pytest.raises(Exception):
        JSONSerializer(ORDER_JSON, registry)({"id": "not a number", "item": 1},
                                            SerializationContext(topic, MessageField.VALUE))


def test_protobuf_serializer_round_trip_through_ferry(ferry, registry):
    topic = helpers.unique("sr-proto")
    order_class = _order_message_class()
    orders = [order_class(id=i, item=f"cup-{i}") for i in range(5)]
    serializer = ProtobufSerializer(order_class, registry, {"use.deprecated.format": False})
    deserializer = ProtobufDeserializer(order_class, {"use.deprecated.format": False}, registry)
    received = _round_trip(ferry, topic, serializer, deserializer, orders)
    assert [(o.id, o.item) for o in received] == [(o.id, o.item) for o in orders]
    assert registry.get_latest_version(f"{topic}-value").schema.schema_type == "PROTOBUF"


def test_record_name_strategy_registers_under_the_record_name(ferry, registry):
    topic = helpers.unique("sr-record")
    namespace = topic.replace("-", "_")
    schema = ORDER_AVRO.replace('"shop"', f'"{namespace}"')
    serializer = AvroSerializer(registry, schema,
                                conf={"subject.name.strategy": record_subject_name_strategy})
    orders = [{"id": 7, "item": "lamp"}]
    received = _round_trip(ferry, topic, serializer, AvroDeserializer(registry), orders)
    assert received == orders
    subjects = registry.get_subjects()
    assert f"{namespace}.Order" in subjects
    assert f"{topic}-value" not in subjects


def test_registry_errors_carry_confluent_codes(registry):
    subject = helpers.unique("sr-errors")
    with pytest.raises(SchemaRegistryError) as missing:
        registry.get_latest_version(subject)
    assert missing.value.http_status_code == 404 and missing.value.error_code == 40401

    with pytest.raises(SchemaRegistryError) as invalid:
        registry.register_schema(subject, Schema('{"type": "record", "name": ', "AVRO"))
    assert invalid.value.http_status_code == 422 and invalid.value.error_code == 42201

    first = registry.register_schema(subject, Schema('"string"', "AVRO"))
    with pytest.raises(SchemaRegistryError) as no_version:
        registry.get_version(subject, 9)
    assert no_version.value.error_code == 40402
    with pytest.raises(SchemaRegistryError) as no_schema:
        registry.get_schema(first + 100000)
    assert no_schema.value.error_code == 40403


def test_soft_then_hard_delete_as_the_registry_does(registry):
    subject = helpers.unique("sr-delete")
    registry.set_compatibility(subject, "NONE")
    registry.register_schema(subject, Schema('"string"', "AVRO"))
    registry.register_schema(subject, Schema('"long"', "AVRO"))
    assert registry.get_versions(subject) == [1, 2]

    # A version must be soft-deleted before it can be deleted for good.
    with pytest.raises(SchemaRegistryError) as not_soft:
        registry.delete_version(subject, 1, permanent=True)
    assert not_soft.value.error_code == 40407
    assert registry.delete_version(subject, 1) == 1
    assert registry.get_versions(subject) == [2]
    assert registry.get_version(subject, 1, deleted=True).version == 1
    assert registry.delete_version(subject, 1, permanent=True) == 1

    assert registry.delete_subject(subject) == [2]
    assert subject not in registry.get_subjects()
    with pytest.raises(SchemaRegistryError) as soft_again:
        registry.delete_subject(subject)
    assert soft_again.value.error_code == 40404
    assert registry.delete_subject(subject, permanent=True) == [2]
    with pytest.raises(SchemaRegistryError) as gone:
        registry.get_versions(subject)
    assert gone.value.error_code == 40401


def test_compatibility_config_and_mode(registry):
    subject = helpers.unique("sr-config")
    assert registry.get_compatibility() == "BACKWARD"
    with pytest.raises(SchemaRegistryError) as unset:
        registry.get_compatibility(subject)
    assert unset.value.error_code == 40408
    registry.set_compatibility(subject, "FULL_TRANSITIVE")
    assert registry.get_compatibility(subject) == "FULL_TRANSITIVE"
    with pytest.raises(SchemaRegistryError) as bad_level:
        registry.set_compatibility(subject, "SIDEWAYS")
    assert bad_level.value.error_code == 42203

    registry.set_compatibility(subject, "NONE")
    registry.register_schema(subject, Schema('"string"', "AVRO"))
    assert registry.update_mode(subject, "READONLY") == "READONLY"
    with pytest.raises(SchemaRegistryError) as read_only:
        registry.register_schema(subject, Schema('"long"', "AVRO"))
    assert read_only.value.error_code == 42205
    assert registry.get_mode(subject) == "READONLY"
    registry.delete_mode(subject)
    assert registry.register_schema(subject, Schema('"long"', "AVRO")) > 0


def test_references_resolve_and_block_deletion(registry):
    base = helpers.unique("sr-ref-base")
    user = helpers.unique("sr-ref-user")
    registry.register_schema(base, Schema(
        '{"type": "record", "name": "Address", "namespace": "shop",'
        ' "fields": [{"name": "city", "type": "string"}]}', "AVRO"))
    from confluent_kafka.schema_registry import SchemaReference
    ref = SchemaReference("shop.Address", base, 1)
    registry.register_schema(user, Schema(
        '{"type": "record", "name": "Customer", "namespace": "shop",'
        ' "fields": [{"name": "home", "type": "shop.Address"}]}', "AVRO", [ref]))
    latest = registry.get_latest_version(user)
    assert [(r.name, r.subject, r.version) for r in latest.schema.references] == \
        [("shop.Address", base, 1)]
    assert registry.get_referenced_by(base, 1) == [latest.schema_id]
    with pytest.raises(SchemaRegistryError) as referenced:
        registry.delete_version(base, 1)
    assert referenced.value.error_code == 42206
    with pytest.raises(SchemaRegistryError) as dangling:
        registry.register_schema(helpers.unique("sr-ref-bad"), Schema(
            '"string"', "AVRO", [SchemaReference("x.Y", helpers.unique("nowhere"), 1)]))
    assert dangling.value.error_code == 42201


def _avro_record(name: str, fields: list[dict]) -> Schema:
    import json
    return Schema(json.dumps({"type": "record", "name": name, "fields": fields}), "AVRO")


def test_backward_incompatible_avro_change_is_refused_with_409(registry):
    subject = helpers.unique("sr-compat-avro")
    v1 = _avro_record("User", [{"name": "name", "type": "string"}])
    registry.register_schema(subject, v1)
    # A field without a default: the new schema cannot read what v1 wrote.
    no_default = _avro_record("User", [{"name": "name", "type": "string"},
                                       {"name": "age", "type": "int"}])
    assert registry.test_compatibility(subject, no_default) is False
    with pytest.raises(SchemaRegistryError) as refused:
        registry.register_schema(subject, no_default)
    assert refused.value.http_status_code == 409 and refused.value.error_code == 409
    assert "age" in refused.value.error_message
    assert registry.get_versions(subject) == [1]
    # With a default it reads old data, so BACKWARD lets it in.
    with_default = _avro_record("User", [{"name": "name", "type": "string"},
                                         {"name": "age", "type": "int", "default": 0}])
    assert registry.test_compatibility(subject, with_default) is True
    registry.register_schema(subject, with_default)
    assert registry.get_versions(subject) == [1, 2]
    # Under NONE anything goes.
    registry.set_compatibility(subject, "NONE")
    registry.register_schema(subject, _avro_record("User", [{"name": "x", "type": "long"}]))
    assert registry.get_versions(subject) == [1, 2, 3]


def test_transitive_levels_check_every_earlier_version(registry):
    # v1 {f: int} -> v2 {} -> v3 {f: string, default ""}: v3 reads v2's data but not v1's.
    v1 = _avro_record("T", [{"name": "f", "type": "int"}])
    v2 = _avro_record("T", [])
    v3 = _avro_record("T", [{"name": "f", "type": "string", "default": ""}])
    plain, transitive = helpers.unique("sr-backward"), helpers.unique("sr-transitive")
    registry.set_compatibility(transitive, "BACKWARD_TRANSITIVE")
    for subject in (plain, transitive):
        registry.register_schema(subject, v1)
        registry.register_schema(subject, v2)
    registry.register_schema(plain, v3)
    with pytest.raises(SchemaRegistryError) as refused:
        registry.register_schema(transitive, v3)
    assert refused.value.error_code == 409


def test_forward_and_full_levels(registry):
    v1 = _avro_record("F", [{"name": "a", "type": "string"}])
    extra = _avro_record("F", [{"name": "a", "type": "string"}, {"name": "b", "type": "int"}])
    forward, full = helpers.unique("sr-forward"), helpers.unique("sr-full")
    registry.set_compatibility(forward, "FORWARD")
    registry.set_compatibility(full, "FULL")
    for subject in (forward, full):
        registry.register_schema(subject, v1)
    # The old schema ignores the added field, so FORWARD accepts it; FULL also needs BACKWARD.
    registry.register_schema(forward, extra)
    with pytest.raises(SchemaRegistryError) as refused:
        registry.register_schema(full, extra)
    assert refused.value.error_code == 409


def test_json_schema_compatibility_follows_the_registry_rules(registry):
    import json
    subject = helpers.unique("sr-compat-json")
    base = {"type": "object", "properties": {"id": {"type": "integer"}}}
    registry.register_schema(subject, Schema(json.dumps(base), "JSON"))
    required = dict(base, required=["id"])
    with pytest.raises(SchemaRegistryError) as refused:
        registry.register_schema(subject, Schema(json.dumps(required), "JSON"))
    assert refused.value.error_code == 409
    widened = {"type": "object", "properties": {"id": {"type": "number"}}}
    registry.register_schema(subject, Schema(json.dumps(widened), "JSON"))
    assert registry.get_versions(subject) == [1, 2]


def test_protobuf_wire_incompatible_change_is_refused(registry):
    import base64

    def order(kind: int) -> Schema:
        file = descriptor_pb2.FileDescriptorProto(name="o.proto", package="shop", syntax="proto3")
        message = file.message_type.add(name="Order")
        message.field.add(name="id", number=1, type=kind,
                          label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
        return Schema(base64.b64encode(file.SerializeToString()).decode(), "PROTOBUF")

    subject = helpers.unique("sr-compat-proto")
    registry.register_schema(subject, order(descriptor_pb2.FieldDescriptorProto.TYPE_INT64))
    # int64 -> int32 shares the varint wire type; int64 -> string does not.
    registry.register_schema(subject, order(descriptor_pb2.FieldDescriptorProto.TYPE_INT32))
    with pytest.raises(SchemaRegistryError) as refused:
        registry.register_schema(subject, order(descriptor_pb2.FieldDescriptorProto.TYPE_STRING))
    assert refused.value.error_code == 409


def test_protobuf_source_text_is_compared_too(registry):
    # `.proto` source, as the Java serializer and curl users register it.
    v1 = """syntax = "proto3"; package shop;
            message Order { int64 id = 1; Line line = 2; message Line { string sku = 1; } }"""
    subject = helpers.unique("sr-compat-proto-src")
    registry.register_schema(subject, Schema(v1, "PROTOBUF"))
    # A field added and one renamed: compatible.
    v2 = v1.replace("int64 id = 1;", "int64 order_id = 1; string note = 3;")
    registry.register_schema(subject, Schema(v2, "PROTOBUF"))
    # `line` from a message to an int32: another wire type.
    with pytest.raises(SchemaRegistryError) as refused:
        registry.register_schema(subject, Schema(v2.replace("Line line = 2;", "int32 line = 2;"),
                                                 "PROTOBUF"))
    assert refused.value.error_code == 409
    with pytest.raises(SchemaRegistryError) as invalid:
        registry.register_schema(subject, Schema("message A { int32 x = 1 }", "PROTOBUF"))
    assert invalid.value.error_code == 42201
