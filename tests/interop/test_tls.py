"""TLS on every listener, with real clients: confluent-kafka and kcat over Kafka SSL, pika over
AMQPS (password and EXTERNAL with a client certificate), HTTPS to the admin API with Python's
ssl, a client trusting the wrong CA, and certificate reload on SIGHUP.

Each case starts its own Ferry (the shared one has no TLS) with certificates made by
`ferry cert generate`, as an operator would.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pika
import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient

import helpers

CLIENT = "orders-app"


def generate(ferry_bin: Path, out: Path, *extra: str) -> Path:
    """Runs `ferry cert generate` into `out`; returns `out`."""
    done = subprocess.run([str(ferry_bin), "cert", "generate", "--dns", "localhost",
                           "--ip", "127.0.0.1", "--client", CLIENT, "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # It prints the settings to paste.
    assert "cert_file = " in done.stdout and "ca_file = " in done.stdout, done.stdout
    return out


def tls_flags(certs: Path, tmp_path: Path, *more: str) -> tuple[str, ...]:
    # The user a client certificate logs in as is its subject mapped by
    # tls.principal_mapping_rules (Kafka's syntax; the same name is the Kafka principal): here
    # the CN, which must be a configured user for EXTERNAL.
    config = tmp_path / "ferry-tls.toml"
    config.write_text(
        '[amqp]\n'
        'users = [{ name = "guest", password = "guest" }, '
        f'{{ name = "{CLIENT}", password = "not-used-with-external" }}]\n'
        '[tls]\nreload_check_interval_ms = 0\n'
        'principal_mapping_rules = "RULE:^CN=([^,]*)$/$1/,DEFAULT"\n')
    return ("--config", str(config),
            "--kafka-tls-listen", "127.0.0.1:0", "--amqp-tls-listen", "127.0.0.1:0",
            "--http-tls-listen", "127.0.0.1:0",
            "--tls-cert-file", str(certs / "server.pem"),
            "--tls-key-file", str(certs / "server.key"),
            "--tls-ca-file", str(certs / "ca.pem"), *more)


@pytest.fixture
def certs(ferry_bin: Path, tmp_path: Path) -> Path:
    return generate(ferry_bin, tmp_path / "certs")


@pytest.fixture
def tls_ferry(spawn_ferry, certs: Path, tmp_path: Path):
    b = spawn_ferry(*tls_flags(certs, tmp_path))
    assert b.kafka_tls and b.amqp_tls and b.https, b.log_tail()
    return b


def kafka_ssl(bootstrap: str, ca: Path, **more) -> dict:
    return {"bootstrap.servers": bootstrap, "security.protocol": "SSL",
            "ssl.ca.location": str(ca), **more}


def test_confluent_kafka_produces_and_consumes_over_ssl(tls_ferry, certs: Path) -> None:
    topic = helpers.unique("tls")
    conf = kafka_ssl(tls_ferry.kafka_tls, certs / "ca.pem")
    producer = Producer(conf)
    for i in range(20):
        producer.produce(topic, key=b"k", value=f"secret-{i}".encode())
    assert producer.flush(30) == 0
    consumer = Consumer({**conf, "group.id": helpers.unique("g"), "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got: list[bytes] = []
    helpers.wait_for("20 records over SSL",
                     lambda: (lambda m: m and not m.error() and got.append(m.value()))(
                         consumer.poll(0.5)) or len(got) == 20)
    consumer.close()
    assert got == [f"secret-{i}".encode() for i in range(20)]
    # Metadata over SSL names the SSL listener (the client would otherwise reconnect in
    # plaintext to the wrong port and fail above).
    md = AdminClient(conf).list_topics(timeout=10)
    assert [f"{b.host}:{b.port}" for b in md.brokers.values()] == [tls_ferry.kafka_tls]


@pytest.mark.kcat
def test_kcat_over_ssl(tls_ferry, certs: Path) -> None:
    if shutil.which("kcat") is None:
        pytest.skip("kcat is not installed")
    topic = helpers.unique("kcat-tls")
    ssl_args = ["-b", tls_ferry.kafka_tls, "-X", "security.protocol=ssl",
                "-X", f"ssl.ca.location={certs / 'ca.pem'}"]
    produced = subprocess.run(["kcat", *ssl_args, "-P", "-t", topic], input="one\ntwo\n",
                              capture_output=True, text=True, timeout=60)
    assert produced.returncode == 0, produced.stderr
    consumed = subprocess.run(["kcat", *ssl_args, "-C", "-t", topic, "-o", "beginning", "-e",
                               "-q"], capture_output=True, text=True, timeout=60)
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout.split() == ["one", "two"]


def test_a_client_trusting_another_ca_fails_and_is_counted(
        tls_ferry, ferry_bin: Path, tmp_path: Path) -> None:
    stranger = generate(ferry_bin, tmp_path / "stranger")
    admin = AdminClient(kafka_ssl(tls_ferry.kafka_tls, stranger / "ca.pem"))
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=3)
    metrics = urllib.request.urlopen(f"{tls_ferry.http}/metrics", timeout=5).read().decode()
    failures = [line for line in metrics.splitlines()
                if line.startswith('ferry_tls_handshake_failures_total{protocol="kafka"}')]
    assert failures and float(failures[0].split()[-1]) >= 1, failures
    assert "TLS handshake failed" in tls_ferry.log_text()


def amqps(addr: str, ctx: ssl.SSLContext, credentials) -> pika.BlockingConnection:
    host, port = helpers.split_hostport(addr)
    return pika.BlockingConnection(pika.ConnectionParameters(
        host="localhost", port=port, credentials=credentials,
        ssl_options=pika.SSLOptions(ctx, "localhost"), connection_attempts=1))


def test_pika_over_amqps_with_a_password(tls_ferry, certs: Path) -> None:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    conn = amqps(tls_ferry.amqp_tls, ctx, pika.PlainCredentials("guest", "guest"))
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"over tls")
    method, _, body = helpers.wait_for("the message", lambda: (lambda g: g[0] and g)(
        ch.basic_get(q, auto_ack=True)))
    assert body == b"over tls"
    conn.close()


def test_pika_external_logs_in_as_the_certificate_cn(tls_ferry, certs: Path) -> None:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.load_cert_chain(str(certs / f"client-{CLIENT}.pem"), str(certs / f"client-{CLIENT}.key"))
    conn = amqps(tls_ferry.amqp_tls, ctx, pika.credentials.ExternalCredentials())
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    # A publisher's user_id must equal the authenticated user (RabbitMQ's validated user-id),
    # so this publish proves the login is the certificate's CN.
    ch.confirm_delivery()
    ch.basic_publish("", q, b"by cert", pika.BasicProperties(user_id=CLIENT))
    _, props, body = helpers.wait_for("the message", lambda: (lambda g: g[0] and g)(
        ch.basic_get(q, auto_ack=True)))
    assert body == b"by cert" and props.user_id == CLIENT
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="someone-else"))
        ch.basic_get(q)
    assert closed.value.reply_code == 406
    conn.close()


def test_external_is_refused_without_a_client_certificate(tls_ferry, certs: Path) -> None:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        amqps(tls_ferry.amqp_tls, ctx, pika.credentials.ExternalCredentials())


def https_get(url: str, ca: Path, auth: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(request, timeout=10, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_admin_api_over_https(tls_ferry, certs: Path) -> None:
    https = tls_ferry.https.replace("127.0.0.1", "localhost")
    assert https_get(f"{https}/readyz", certs / "ca.pem")[0] == 200
    assert https_get(f"{https}/api/topics", certs / "ca.pem")[0] == 401
    status, body = https_get(f"{https}/api/topics", certs / "ca.pem", "admin:admin")
    assert status == 200 and isinstance(json.loads(body), (list, dict))


def test_admin_cli_over_https_with_cacert(tls_ferry, ferry_bin: Path, certs: Path) -> None:
    https = tls_ferry.https.replace("127.0.0.1", "localhost")
    env = {"PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(ferry_bin), "topic", *args, "--admin-url", https],
                              capture_output=True, text=True, timeout=60, env=env)

    topic = helpers.unique("cli-tls")
    created = cli("create", topic, "--cacert", str(certs / "ca.pem"))
    assert created.returncode == 0, created.stderr
    listed = cli("list", "--json", "--cacert", str(certs / "ca.pem"))
    assert listed.returncode == 0, listed.stderr
    assert topic in listed.stdout
    # Without --cacert the development CA is not trusted: a clear error, not a hang.
    untrusted = cli("list")
    assert untrusted.returncode != 0
    assert "certificate" in untrusted.stderr.lower() or "ca" in untrusted.stderr.lower(), \
        untrusted.stderr


def test_sighup_reloads_certificates_and_a_broken_one_is_kept_out(
        spawn_ferry, ferry_bin: Path, certs: Path, tmp_path: Path) -> None:
    # The broker reads the files in live/, which the case replaces as an operator would.
    live = tmp_path / "live"
    shutil.copytree(certs, live)
    b = spawn_ferry(*tls_flags(live, tmp_path))
    old_ca = certs / "ca.pem"
    assert https_get(f"{b.https}/readyz", old_ca)[0] == 200

    renewed = generate(ferry_bin, tmp_path / "renewed")
    for name in ("server.pem", "server.key"):
        shutil.copy(renewed / name, live / name)
    b.process.send_signal(signal.SIGHUP)
    helpers.wait_for("the reload", lambda: "TLS certificates reloaded" in b.log_text(), 15)
    assert https_get(f"{b.https}/readyz", renewed / "ca.pem")[0] == 200
    with pytest.raises(urllib.error.URLError):
        https_get(f"{b.https}/readyz", old_ca)

    (live / "server.pem").write_text("-----BEGIN CERTIFICATE-----\nbroken\n")
    b.process.send_signal(signal.SIGHUP)
    helpers.wait_for("the failed reload", lambda: "keeping the certificates in use" in b.log_text(),
                     15)
    assert https_get(f"{b.https}/readyz", renewed / "ca.pem")[0] == 200


NODE_DIR = Path(__file__).parent / "node"


def node_client(script: str, *args: str) -> subprocess.CompletedProcess:
    """Runs a Node.js client of tests/interop/node, or skips saying why it cannot."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (amqplib is a Node.js client)")
    if not (NODE_DIR / "node_modules" / "amqplib").is_dir():
        pytest.skip("amqplib is not installed: run `npm ci --prefix tests/interop/node` "
                    "(.ci/run does)")
    return subprocess.run([node, str(NODE_DIR / script), *args], capture_output=True,
                          text=True, timeout=60)


def test_amqplib_over_amqps_with_a_password_and_with_external(tls_ferry, certs: Path) -> None:
    port = helpers.split_hostport(tls_ferry.amqp_tls)[1]
    ca = str(certs / "ca.pem")
    done = node_client("amqps_roundtrip.js", f"amqps://guest:guest@localhost:{port}/%2f", ca)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["got"] == "over amqps from amqplib", result
    assert result["queue"].startswith("amq.gen-"), result
    assert result["server"] == "Ferry", result
    # EXTERNAL with the client certificate: the mapped subject (its CN here) is the user.
    done = node_client("amqps_roundtrip.js", f"amqps://localhost:{port}/%2f", ca,
                       str(certs / f"client-{CLIENT}.pem"), str(certs / f"client-{CLIENT}.key"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["got"] == "over amqps from amqplib"


def test_kombu_over_amqps(tls_ferry, certs: Path) -> None:
    import kombu

    port = helpers.split_hostport(tls_ferry.amqp_tls)[1]
    tls = {"ca_certs": str(certs / "ca.pem"), "cert_reqs": ssl.CERT_REQUIRED,
           "server_hostname": "localhost"}
    name = helpers.unique("kombu-tls")
    with kombu.Connection(f"amqp://guest:guest@localhost:{port}//", ssl=tls,
                          connect_timeout=10) as conn:
        with conn.SimpleQueue(name) as q:
            q.put({"over": "tls"})
            message = q.get(block=True, timeout=10)
            message.ack()
            assert message.payload == {"over": "tls"}


def test_curl_reads_the_admin_api_over_https(tls_ferry, certs: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    https = tls_ferry.https.replace("127.0.0.1", "localhost")
    done = subprocess.run([curl, "-sS", "--fail", "--cacert", str(certs / "ca.pem"),
                           "-u", "admin:admin", f"{https}/api/overview"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["node"], done.stdout
    # Without the CA, curl refuses the self-signed chain.
    untrusted = subprocess.run([curl, "-sS", "-u", "admin:admin", f"{https}/api/overview"],
                               capture_output=True, text=True, timeout=30)
    assert untrusted.returncode != 0
