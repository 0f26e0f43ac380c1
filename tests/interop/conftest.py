"""Session set-up for the interop suite: start `ferry serve` as a subprocess (or use an already
running Kafka-compatible broker), wait for readiness, and stop it with SIGTERM at the end.

Options (also `pytest --help`):
  --ferry-bin PATH            the ferry binary (default: $FERRY_BIN, else target/debug/ferry,
                              under $CARGO_TARGET_DIR if that is set)
  --kafka-bootstrap HOST:PORT run the Kafka cases against this broker instead of spawning Ferry
  --amqp-url URL              run the AMQP cases (marker `amqp`) against this AMQP 0-9-1 broker
                              (e.g. RabbitMQ) instead of spawning Ferry (default: $AMQP_URL)
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
from confluent_kafka.admin import AdminClient

import helpers

REPO = Path(__file__).resolve().parents[2]
READY_RE = re.compile(
    r"ferry is ready kafka_addr=(?P<kafka>\S+) amqp_addr=(?P<amqp>\S+) http_addr=(?P<http>\S+)")
# The TLS listeners' addresses follow on the same line ("off" when not configured).
READY_TLS_RE = re.compile(
    r"ferry is ready .* kafka_tls_addr=(?P<kafka_tls>\S+) amqp_tls_addr=(?P<amqp_tls>\S+) "
    r"https_addr=(?P<https>\S+)")
# The native (QUIC) listener's address ends the same line.
READY_NATIVE_RE = re.compile(r"ferry is ready .* native_addr=(?P<native>\S+)")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ferry interop")
    group.addoption("--ferry-bin", default=os.environ.get("FERRY_BIN"),
                    help="ferry binary to start (default: $FERRY_BIN, else "
                         "$CARGO_TARGET_DIR/debug/ferry, else target/debug/ferry)")
    group.addoption("--kafka-bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP"),
                    help="HOST:PORT of an already running Kafka-compatible broker to test "
                         "instead of spawning Ferry (default: $KAFKA_BOOTSTRAP)")
    group.addoption("--amqp-url", default=os.environ.get("AMQP_URL"),
                    help="amqp://user:pass@host:port/vhost of an already running AMQP 0-9-1 "
                         "broker (e.g. RabbitMQ) for the AMQP cases instead of spawning Ferry "
                         "(default: $AMQP_URL)")


@dataclass
class Broker:
    """The broker the cases talk to."""
    bootstrap: str
    is_ferry: bool
    api_versions: dict[int, tuple[int, int]] = field(default_factory=dict)
    http: Optional[str] = None
    amqp_addr: Optional[str] = None
    data_dir: Optional[Path] = None
    log_path: Optional[Path] = None
    process: Optional[subprocess.Popen] = None
    kafka_tls: Optional[str] = None
    amqp_tls: Optional[str] = None
    https: Optional[str] = None
    native_addr: Optional[str] = None

    @property
    def supports_idempotence(self) -> bool:
        return helpers.API_INIT_PRODUCER_ID in self.api_versions

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def _http_status(url: str) -> Optional[int]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def _start_ferry(binary: Path, workdir: Path, extra_args: tuple[str, ...] = ()) -> Broker:
    """Starts `ferry serve` on loopback ports the OS picks; `extra_args` are more flags."""
    data_dir = workdir / "data"
    # Already there when a case restarts a Ferry it killed (test_bridge_rabbitmq.py).
    data_dir.mkdir(exist_ok=True)
    log_path = workdir / "ferry.log"
    env = dict(os.environ)
    env.update(NO_COLOR="1", RUST_LOG=os.environ.get("FERRY_INTEROP_RUST_LOG", "info"))
    # Ferry reads every FERRY_* variable as a setting and refuses unknown ones (FERRY_BIN
    # included), and the caller's settings must not leak in anyway.
    for key in list(env):
        if key.startswith("FERRY_"):
            del env[key]
    cmd = [str(binary), "serve", "--data-dir", str(data_dir),
           "--kafka-listen", "127.0.0.1:0", "--amqp-listen", "127.0.0.1:0",
           "--native-listen", "127.0.0.1:0",
           "--http-listen", "127.0.0.1:0", *extra_args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                cwd=workdir)
    broker = Broker(bootstrap="", is_ferry=True, data_dir=data_dir, log_path=log_path,
                    process=proc)

    deadline = time.monotonic() + START_TIMEOUT
    match = None
    while match is None:
        match = READY_RE.search(broker.log_text())
        if match:
            break
        if proc.poll() is not None:
            raise RuntimeError(f"ferry exited with {proc.returncode} before it was ready:\n"
                               f"{broker.log_tail()}")
        if time.monotonic() > deadline:
            _kill(proc)
            raise RuntimeError(f"ferry did not log 'ferry is ready' within {START_TIMEOUT:.0f} s:"
                               f"\n{broker.log_tail()}")
        time.sleep(0.02)
    broker.bootstrap = match["kafka"]
    broker.amqp_addr = match["amqp"]
    broker.http = f"http://{match['http']}"
    native = READY_NATIVE_RE.search(broker.log_text())
    if native:
        broker.native_addr = native["native"]
    tls = READY_TLS_RE.search(broker.log_text())
    if tls:
        off = lambda addr: None if addr == "off" else addr  # noqa: E731
        broker.kafka_tls, broker.amqp_tls = off(tls["kafka_tls"]), off(tls["amqp_tls"])
        broker.https = off(tls["https"]) and f"https://{tls['https']}"
    while _http_status(f"{broker.http}/readyz") != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill(proc)
            raise RuntimeError(f"{broker.http}/readyz never answered 200:\n{broker.log_tail()}")
        time.sleep(0.02)
    return broker


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def _stop_ferry(broker: Broker) -> None:
    proc = broker.process
    assert proc is not None
    if proc.poll() is not None:
        raise AssertionError(f"ferry died during the suite with exit code {proc.returncode}:\n"
                             f"{broker.log_tail()}")
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise AssertionError(f"ferry did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM:\n"
                             f"{broker.log_tail()}")
    assert code == 0, f"ferry exited with {code} after SIGTERM:\n{broker.log_tail()}"
    panics = [line for line in broker.log_text().splitlines() if "panicked" in line]
    assert not panics, "ferry panicked during the suite:\n" + "\n".join(panics)


def _default_binary() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR") or "target")
    return (target if target.is_absolute() else REPO / target) / "debug" / "ferry"


_SESSION_BROKER: Optional[Broker] = None


@pytest.fixture(scope="session")
def ferry_bin(request: pytest.FixtureRequest) -> Path:
    """The ferry binary under test."""
    binary = Path(request.config.getoption("--ferry-bin") or _default_binary())
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(f"no ferry binary at {binary}: run `cargo build` first, or pass --ferry-bin / "
                    "FERRY_BIN, or --kafka-bootstrap / --amqp-url for another broker",
                    pytrace=False)
    return binary


@pytest.fixture
def spawn_ferry(ferry_bin: Path, tmp_path: Path):
    """spawn_ferry(*flags) -> Broker: a Ferry of this case's own (for settings the shared one
    does not have, such as TLS), stopped and checked for panics at the end of the case."""
    started: list[Broker] = []

    def spawn(*flags: str) -> Broker:
        workdir = Path(tempfile.mkdtemp(prefix="ferry-", dir=tmp_path))
        b = _start_ferry(ferry_bin, workdir, flags)
        started.append(b)
        return b

    yield spawn
    for b in started:
        _stop_ferry(b)


@pytest.fixture(scope="session")
def ferry(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The spawned Ferry process, shared by the Kafka and the AMQP cases."""
    global _SESSION_BROKER
    binary = request.getfixturevalue("ferry_bin")
    workdir = Path(tempfile.mkdtemp(prefix="ferry-interop-",
                                    dir=tmp_path_factory.getbasetemp()))
    b = _start_ferry(binary, workdir)
    _SESSION_BROKER = b
    try:
        yield b
    finally:
        _stop_ferry(b)


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest):
    external = request.config.getoption("--kafka-bootstrap")
    if external:
        b = Broker(bootstrap=external, is_ferry=False)
        b.api_versions = helpers.api_versions(external)
        return b
    b = request.getfixturevalue("ferry")
    if not b.api_versions:
        b.api_versions = helpers.api_versions(b.bootstrap)
    return b


def _amqp_external(config: pytest.Config) -> Optional[str]:
    return config.getoption("--amqp-url") or None


@pytest.fixture(scope="session")
def amqp_url(request: pytest.FixtureRequest) -> str:
    """The AMQP URL the `amqp` cases connect to: --amqp-url, else the spawned Ferry's listener."""
    external = _amqp_external(request.config)
    if external:
        import pika  # only the AMQP cases need it
        try:
            pika.BlockingConnection(pika.URLParameters(external)).close()
        except Exception as e:  # noqa: BLE001 - reported as one clear failure
            pytest.fail(f"--amqp-url {external}: cannot open an AMQP connection: {e!r}",
                        pytrace=False)
        return external
    b = request.getfixturevalue("ferry")
    return f"amqp://guest:guest@{b.amqp_addr}/%2f"


@pytest.fixture(scope="session")
def amqp_is_ferry(request: pytest.FixtureRequest) -> bool:
    return _amqp_external(request.config) is None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`ferry_bug(reason)` cases are strict xfails when the AMQP broker is Ferry, and must pass
    on any other broker (RabbitMQ)."""
    if _amqp_external(config):
        return
    for item in items:
        marker = item.get_closest_marker("ferry_bug")
        if marker is not None:
            reason = marker.args[0] if marker.args else marker.kwargs.get("reason", "")
            item.add_marker(pytest.mark.xfail(strict=True, reason=f"Ferry bug: {reason}"))


@pytest.fixture(scope="session")
def admin(broker: Broker) -> AdminClient:
    # Its log goes through Python logging (delivered on its own calls), so librdkafka does not
    # print reconnect noise to stderr after the session's broker has stopped.
    return AdminClient({"bootstrap.servers": broker.bootstrap},
                       logger=logging.getLogger("rdkafka.admin"))


@pytest.fixture
def new_topic(request: pytest.FixtureRequest, admin: AdminClient):
    """new_topic(partitions=1, config=None) -> name: creates a uniquely named topic for this
    case and deletes it afterwards."""
    created: list[str] = []

    def make(partitions: int = 1, config: Optional[dict[str, str]] = None) -> str:
        name = helpers.unique(request.node.name)
        helpers.create_topic(admin, name, partitions, config)
        created.append(name)
        return name

    yield make
    helpers.delete_topics(admin, created)


@pytest.fixture(autouse=True)
def _idempotence_gate(request: pytest.FixtureRequest) -> None:
    """Cases marked needs_idempotence run once the broker advertises InitProducerId."""
    if request.node.get_closest_marker("needs_idempotence") is None:
        return
    b: Broker = request.getfixturevalue("broker")
    if not b.supports_idempotence:
        pytest.skip("the broker does not advertise InitProducerId (idempotent producer) yet")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    b = _SESSION_BROKER
    if b is None or not b.is_ferry:
        return
    noisy = [line for line in b.log_text().splitlines()
             if " WARN " in line or " ERROR " in line or "panicked" in line]
    terminalreporter.section("ferry")
    terminalreporter.write_line(f"ferry log: {b.log_path}")
    if noisy:
        terminalreporter.write_line(f"{len(noisy)} WARN/ERROR lines in the ferry log "
                                    f"(first 30):")
        for line in noisy[:30]:
            terminalreporter.write_line("  " + line)
    if exitstatus != 0:
        terminalreporter.write_line("last lines of the ferry log:")
        terminalreporter.write_line(b.log_tail(40))
