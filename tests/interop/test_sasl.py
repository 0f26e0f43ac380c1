"""Kafka SASL with real clients (issue 13): confluent-kafka with PLAIN over SASL_PLAINTEXT and
SCRAM-SHA-512 over SASL_SSL, kcat with SCRAM-SHA-512 over SASL_SSL, kafka-python with
SCRAM-SHA-256, aiokafka with PLAIN; a wrong password, a client that skips SASL, and
confluent-kafka's AdminClient managing SCRAM credentials, and Kafka ACLs: AdminClient
create/describe/delete_acls and a produce the ACLs deny.

Each case starts its own Ferry requiring SASL from every client (`kafka.allow_anonymous =
false`; by default loopback clients may skip it) with users from `[[users]]`.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialUpsertion)

import helpers
from test_tls import generate

USER, PASSWORD = "alice", "alice-secret"


@pytest.fixture
def certs(ferry_bin: Path, tmp_path: Path) -> Path:
    return generate(ferry_bin, tmp_path / "certs")


@pytest.fixture
def sasl_ferry(spawn_ferry, certs: Path, tmp_path: Path):
    config = tmp_path / "ferry-sasl.toml"
    config.write_text(
        '[kafka]\nallow_anonymous = false\n'
        '[[users]]\n'
        f'name = "{USER}"\npassword = "{PASSWORD}"\ntags = ["administrator"]\n')
    b = spawn_ferry("--config", str(config), "--kafka-tls-listen", "127.0.0.1:0",
                    "--tls-cert-file", str(certs / "server.pem"),
                    "--tls-key-file", str(certs / "server.key"))
    assert b.kafka_tls, b.log_tail()
    return b


def sasl(bootstrap: str, mechanism: str, password: str = PASSWORD, ca: Path | None = None,
         **more) -> dict:
    conf = {"bootstrap.servers": bootstrap, "sasl.mechanisms": mechanism,
            "sasl.username": USER, "sasl.password": password,
            "security.protocol": "SASL_SSL" if ca else "SASL_PLAINTEXT", **more}
    if ca:
        conf["ssl.ca.location"] = str(ca)
    return conf


def round_trip(conf: dict, count: int = 10) -> list[bytes]:
    topic = helpers.unique("sasl")
    producer = Producer(conf)
    for i in range(count):
        producer.produce(topic, value=f"m-{i}".encode())
    assert producer.flush(30) == 0
    consumer = Consumer({**conf, "group.id": helpers.unique("g"), "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got: list[bytes] = []
    helpers.wait_for(f"{count} records",
                     lambda: (lambda m: m and not m.error() and got.append(m.value()))(
                         consumer.poll(0.5)) or len(got) == count)
    consumer.close()
    return got


def test_confluent_kafka_plain_over_sasl_plaintext(sasl_ferry) -> None:
    got = round_trip(sasl(sasl_ferry.bootstrap, "PLAIN"))
    assert got == [f"m-{i}".encode() for i in range(10)]


def test_confluent_kafka_scram_sha_512_over_sasl_ssl(sasl_ferry, certs: Path) -> None:
    conf = sasl(sasl_ferry.kafka_tls, "SCRAM-SHA-512", ca=certs / "ca.pem")
    assert round_trip(conf) == [f"m-{i}".encode() for i in range(10)]


def test_wrong_password_and_no_sasl_are_refused(sasl_ferry) -> None:
    errors: list[KafkaError] = []
    admin = AdminClient(sasl(sasl_ferry.bootstrap, "SCRAM-SHA-256", password="wrong",
                             error_cb=errors.append))
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=3)
    # The error callback is served by poll().
    helpers.wait_for("an authentication error", lambda: (admin.poll(0.2), errors)[1])
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    assert any("Authentication failed" in e.str() for e in errors), errors

    anonymous = AdminClient({"bootstrap.servers": sasl_ferry.bootstrap})
    with pytest.raises(KafkaException):
        anonymous.list_topics(timeout=3)


@pytest.mark.kcat
def test_kcat_scram_sha_512_over_sasl_ssl(sasl_ferry, certs: Path) -> None:
    if shutil.which("kcat") is None:
        pytest.skip("kcat is not installed")
    topic = helpers.unique("kcat-sasl")
    args = ["-b", sasl_ferry.kafka_tls, "-X", "security.protocol=SASL_SSL",
            "-X", "sasl.mechanisms=SCRAM-SHA-512", "-X", f"sasl.username={USER}",
            "-X", f"sasl.password={PASSWORD}", "-X", f"ssl.ca.location={certs / 'ca.pem'}"]
    produced = subprocess.run(["kcat", *args, "-P", "-t", topic], input="one\ntwo\n",
                              capture_output=True, text=True, timeout=60)
    assert produced.returncode == 0, produced.stderr
    consumed = subprocess.run(["kcat", *args, "-C", "-t", topic, "-o", "beginning", "-e", "-q"],
                              capture_output=True, text=True, timeout=60)
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout.split() == ["one", "two"]


def test_kafka_python_scram_sha_256(sasl_ferry) -> None:
    from kafka import KafkaConsumer, KafkaProducer
    topic = helpers.unique("kp-scram")
    conf = dict(bootstrap_servers=sasl_ferry.bootstrap, security_protocol="SASL_PLAINTEXT",
                sasl_mechanism="SCRAM-SHA-256", sasl_plain_username=USER,
                sasl_plain_password=PASSWORD)
    producer = KafkaProducer(**conf)
    for i in range(5):
        producer.send(topic, f"kp-{i}".encode()).get(timeout=30)
    producer.close()
    consumer = KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=10000,
                             group_id=helpers.unique("kp"), **conf)
    got = []
    for message in consumer:
        got.append(message.value)
        if len(got) == 5:
            break
    consumer.close()
    assert got == [f"kp-{i}".encode() for i in range(5)]


def test_aiokafka_plain(sasl_ferry) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    async def run() -> list[bytes]:
        topic = helpers.unique("aio-plain")
        conf = dict(bootstrap_servers=sasl_ferry.bootstrap, security_protocol="SASL_PLAINTEXT",
                    sasl_mechanism="PLAIN", sasl_plain_username=USER,
                    sasl_plain_password=PASSWORD)
        producer = AIOKafkaProducer(**conf)
        await producer.start()
        try:
            for i in range(3):
                await producer.send_and_wait(topic, f"aio-{i}".encode())
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, auto_offset_reset="earliest",
                                    group_id=helpers.unique("aio"), **conf)
        await consumer.start()
        got = []
        try:
            async with asyncio.timeout(30):
                async for message in consumer:
                    got.append(message.value)
                    if len(got) == 3:
                        break
        finally:
            await consumer.stop()
        return got

    assert asyncio.run(run()) == [f"aio-{i}".encode() for i in range(3)]


def test_admin_client_manages_scram_credentials(sasl_ferry) -> None:
    admin = AdminClient(sasl(sasl_ferry.bootstrap, "PLAIN"))
    upsert = UserScramCredentialUpsertion(
        "carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), b"carol-secret")
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result(timeout=30)
    described = admin.describe_user_scram_credentials(["carol"])["carol"].result(timeout=30)
    infos = described.scram_credential_infos
    assert [(i.mechanism, i.iterations) for i in infos] == [(ScramMechanism.SCRAM_SHA_512, 8192)]

    # The new credential logs in with SCRAM-SHA-512 (Kafka only ever sent its salted form).
    carol = AdminClient({"bootstrap.servers": sasl_ferry.bootstrap,
                         "security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "SCRAM-SHA-512",
                         "sasl.username": "carol", "sasl.password": "carol-secret"})
    assert carol.list_topics(timeout=10).cluster_id


def test_create_acls_answers_security_disabled(sasl_ferry) -> None:
    """With `kafka.acl_enabled` off the broker answers as Kafka without an authorizer."""
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType,
                                       ResourcePatternType, ResourceType)
    admin = AdminClient(sasl(sasl_ferry.bootstrap, "PLAIN"))
    binding = AclBinding(ResourceType.TOPIC, "orders", ResourcePatternType.LITERAL,
                         "User:alice", "*", AclOperation.READ, AclPermissionType.ALLOW)
    for future in admin.create_acls([binding]).values():
        with pytest.raises(KafkaException) as refused:
            future.result(timeout=30)
        assert refused.value.args[0].code() == KafkaError.SECURITY_DISABLED


@pytest.fixture
def acl_ferry(spawn_ferry, tmp_path: Path):
    """ACLs on (`kafka.acl_enabled`), alice a super user, bob an ordinary user."""
    config = tmp_path / "ferry-acls.toml"
    config.write_text(
        '[kafka]\nallow_anonymous = false\nacl_enabled = true\nsuper_users = "User:alice"\n'
        f'[[users]]\nname = "{USER}"\npassword = "{PASSWORD}"\n'
        '[[users]]\nname = "bob"\npassword = "bob-secret"\n')
    return spawn_ferry("--config", str(config))


def test_admin_client_manages_acls_and_a_denied_produce_fails(acl_ferry) -> None:
    from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation,
                                       AclPermissionType, NewTopic, ResourcePatternType,
                                       ResourceType)
    admin = AdminClient(sasl(acl_ferry.bootstrap, "PLAIN"))
    for future in admin.create_topics([NewTopic("orders", 1), NewTopic("payroll", 1)]).values():
        future.result(timeout=30)
    allow = AclBinding(ResourceType.TOPIC, "ord", ResourcePatternType.PREFIXED,
                       "User:bob", "*", AclOperation.WRITE, AclPermissionType.ALLOW)
    deny = AclBinding(ResourceType.TOPIC, "payroll", ResourcePatternType.LITERAL,
                      "User:*", "*", AclOperation.ALL, AclPermissionType.DENY)
    for future in admin.create_acls([allow, deny]).values():
        assert future.result(timeout=30) is None
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    described = admin.describe_acls(everything).result(timeout=30)
    assert sorted(described, key=str) == sorted([allow, deny], key=str)

    bob = {**sasl(acl_ferry.bootstrap, "PLAIN"), "sasl.username": "bob",
           "sasl.password": "bob-secret", "message.timeout.ms": 10000}
    errors: list[KafkaError] = []
    producer = Producer({**bob, "error_cb": errors.append})
    reports: dict[str, KafkaError | None] = {}
    for topic in ("orders", "payroll"):
        producer.produce(topic, value=b"from bob",
                         on_delivery=lambda err, msg, t=topic: reports.__setitem__(t, err))
    producer.flush(30)
    assert reports["orders"] is None
    assert reports["payroll"] is not None
    assert reports["payroll"].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED

    # Deleting by principal returns what went; bob's writes to orders stop too.
    bobs = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, "User:bob", None,
                            AclOperation.ANY, AclPermissionType.ANY)
    deleted = [b for f in admin.delete_acls([bobs]).values() for b in f.result(timeout=30)]
    assert deleted == [allow]
    assert admin.describe_acls(everything).result(timeout=30) == [deny]
    producer.produce("orders", value=b"again",
                     on_delivery=lambda err, msg: reports.__setitem__("again", err))
    producer.flush(30)
    assert reports["again"] is not None
    assert reports["again"].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
