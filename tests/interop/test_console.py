"""The web console in a real browser (Debian's chromium + chromedriver through selenium),
against a Ferry that real clients use: log in, see a topic (confluent-kafka) and a queue (pika),
watch a rate chart's plotted value change while a producer runs, browse a record with its
headers decoded, purge a queue, replay a dead letter and see it reach its queue again, close a
connection and see pika notice, and a `monitoring` user who cannot purge. Every page is saved
as a screenshot under $INTEROP_ARTIFACTS/console (default target/interop-artifacts/console), at
1280x800, in dark mode and at phone width; no case may leave an error in the browser console.

Skipped when chromium or chromedriver is missing (.ci/run installs them)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pika
import pika.exceptions
import pytest
from confluent_kafka import Producer

import helpers

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromedriver are not installed")

ARTIFACTS = Path(os.environ.get("INTEROP_ARTIFACTS", Path(__file__).resolve().parents[2]
                                / "target" / "interop-artifacts")) / "console"


def _api(ferry, method: str, path: str, body=None, user: str = "admin", password: str = "admin"):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{ferry.http}{path}", method=method, data=data)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,800", "--force-prefers-reduced-motion"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_window_size(1280, 800)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def console(browser, ferry):
    """The browser logged in as admin at the overview; after the case, no console errors."""
    browser.get(f"{ferry.http}/")
    browser.execute_script("sessionStorage.clear(); localStorage.setItem('ferry-theme', 'light');")
    browser.get(f"{ferry.http}/")
    _login(browser, "admin", "admin")
    yield browser
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"browser console errors: {errors}"


def _login(driver, user: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    _wait(driver, lambda d: d.find_element(By.ID, "login-user").is_displayed(), "the login form")
    driver.find_element(By.ID, "login-user").send_keys(user)
    driver.find_element(By.ID, "login-password").send_keys(password)
    driver.find_element(By.ID, "login-submit").click()
    _wait(driver, lambda d: d.find_element(By.ID, "whoami").text.startswith(user), "logged in")


def _wait(driver, check, what: str, timeout: float = 30.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        check, message=f"timed out waiting for {what}")


def _go(driver, hash_path: str, marker: str) -> None:
    """Opens a page and waits for `marker` (CSS) to show."""
    from selenium.webdriver.common.by import By

    driver.execute_script("location.hash = arguments[0]", hash_path)
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, marker), f"{marker} on {hash_path}")


def _shot(driver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _row_text(driver, key: str) -> str:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f'tr[data-key="{key}"]')
    return rows[0].text if rows else ""


def _produce(ferry, topic: str, count: int, headers=None) -> None:
    p = Producer({"bootstrap.servers": ferry.bootstrap})
    for i in range(count):
        p.produce(topic, key=f"k{i}", value=f"value-{i}", headers=headers)
    assert p.flush(15) == 0


def _pika(ferry, name: str = "console-test"):
    params = pika.URLParameters(f"amqp://guest:guest@{ferry.amqp_addr}/%2f")
    params.client_properties = {"connection_name": name}
    return pika.BlockingConnection(params)


def test_login_overview_and_objects_made_by_real_clients(console, ferry):
    from selenium.webdriver.common.by import By

    topic = helpers.unique("console-topic")
    queue = helpers.unique("console-queue")
    _produce(ferry, topic, 3)
    conn = _pika(ferry)
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True)
        for i in range(4):
            ch.basic_publish("", queue, f"job-{i}".encode())
        _go(console, "#/overview", '[data-card="connections"]')
        _wait(console, lambda d: d.find_element(By.CSS_SELECTOR, '[data-card="queues"]').text
              not in ("", "–"), "overview figures")
        _shot(console, "overview")

        _go(console, "#/topics", "table")
        _wait(console, lambda d: topic in _row_text(d, topic), "the topic listed")
        assert "3" in _row_text(console, topic)
        _shot(console, "topics")

        _go(console, "#/queues", "table")
        _wait(console, lambda d: queue in _row_text(d, queue) and " 4 " in f" {_row_text(d, queue)} ",
              "the queue listed with 4 ready")
        _shot(console, "queues")

        # Keyboard: "2" opens Topics, "3" Queues.
        console.find_element(By.TAG_NAME, "body").send_keys("2")
        _wait(console, lambda d: d.execute_script("return location.hash") == "#/topics", "key 2")
    finally:
        conn.close()


def test_rate_chart_moves_while_a_producer_runs(console, ferry):
    from selenium.webdriver.common.by import By

    topic = helpers.unique("console-rate")
    _produce(ferry, topic, 1)
    stop = threading.Event()

    def run() -> None:
        p = Producer({"bootstrap.servers": ferry.bootstrap, "linger.ms": 5})
        started = time.monotonic()
        while not stop.is_set() and time.monotonic() < started + 60:
            # Fast and slow phases of 7 s, so 5 s samples see different rates.
            fast = int((time.monotonic() - started) / 7) % 2 == 0
            for _ in range(100 if fast else 10):
                p.produce(topic, value=b"x" * 100)
            p.poll(0)
            time.sleep(0.25)
        p.flush(15)

    producer = threading.Thread(target=run, daemon=True)
    producer.start()
    try:
        _go(console, f"#/topics/{urllib.parse.quote(topic)}", '[data-chart="topic-rate"]')
        seen: set[str] = set()

        def moved(d):
            last = d.find_element(By.CSS_SELECTOR, '[data-chart="topic-rate"]').get_attribute(
                "data-last")
            if last:
                seen.add(last)
            return len({v for v in seen if float(v) > 0}) >= 2

        print("plotted rates seen:", seen)
        try:
            _wait(console, moved, "two different non-zero plotted rates", timeout=45)
        finally:
            _shot(console, "topic-rate-chart")
        assert seen, "the chart plotted nothing"
    finally:
        stop.set()
        producer.join(30)


def test_browse_a_record_with_its_headers_and_produce_one(console, ferry):
    from selenium.webdriver.common.by import By

    topic = helpers.unique("console-browse")
    _produce(ferry, topic, 2, headers=[("trace-id", b"abc-123")])
    _go(console, f"#/topics/{urllib.parse.quote(topic)}", '[data-action="browse"]')
    offset = console.find_element(By.CSS_SELECTOR, 'input[name="offset"]')
    offset.send_keys("1")
    console.find_element(By.CSS_SELECTOR, '[data-action="browse"]').click()
    _wait(console, lambda d: "value-1" in _row_text(d, "0-1"), "record 0-1")
    row = _row_text(console, "0-1")
    assert "k1" in row and "trace-id: abc-123" in row, row
    assert not _row_text(console, "0-0"), "browsing from offset 1 skips offset 0"
    _shot(console, "topic")

    console.find_element(By.CSS_SELECTOR, 'input[name="key"]').send_keys("from-console")
    console.find_element(By.CSS_SELECTOR, 'textarea[name="value"]').send_keys("hello from the console")
    console.find_element(By.CSS_SELECTOR, '[data-action="produce"]').click()
    _, records = helpers.wait_for("the produced record", lambda: (
        lambda r: r if r[1] and len(r[1]) == 3 else None)(
        _api(ferry, "GET", f"/api/topics/{urllib.parse.quote(topic)}/records?offset=0")))
    assert records[2]["key"] == "from-console"
    assert records[2]["payload"] == "hello from the console"


def test_purge_a_queue(console, ferry):
    from selenium.webdriver.common.by import By

    queue = helpers.unique("console-purge")
    conn = _pika(ferry)
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True)
        for i in range(5):
            ch.basic_publish("", queue, f"m{i}".encode())
        _go(console, f"#/queues/%2F/{urllib.parse.quote(queue)}", '[data-action="purge"]')
        _wait(console, lambda d: d.find_element(By.CSS_SELECTOR, '[data-card="ready"]').text == "5",
              "5 ready")
        console.find_element(By.CSS_SELECTOR, '[data-action="get"]').click()
        _wait(console, lambda d: "m4" in _row_text(d, "4"), "the messages listed")
        _shot(console, "queue")
        console.find_element(By.CSS_SELECTOR, '[data-action="purge"]').click()
        console.switch_to.alert.accept()
        _wait(console, lambda d: d.find_element(By.CSS_SELECTOR, '[data-card="ready"]').text == "0",
              "0 ready after the purge")
        assert ch.queue_declare(queue, passive=True).method.message_count == 0
    finally:
        conn.close()


def test_replay_a_dead_letter_back_to_its_queue(console, ferry):
    from selenium.webdriver.common.by import By

    work = helpers.unique("console-work")
    dlx = helpers.unique("console-dlx")
    dlq = helpers.unique("console-dlq")
    conn = _pika(ferry)
    try:
        ch = conn.channel()
        ch.exchange_declare(dlx, "fanout", durable=True)
        ch.queue_declare(dlq, durable=True)
        ch.queue_bind(dlq, dlx)
        ch.queue_declare(work, durable=True, arguments={"x-dead-letter-exchange": dlx})
        ch.basic_publish("", work, b"order-42")
        method, _, body = helpers.wait_for("the message", lambda: (
            lambda r: r if r[0] else None)(ch.basic_get(work)))
        assert body == b"order-42"
        ch.basic_reject(method.delivery_tag, requeue=False)
        helpers.wait_for("the dead letter", lambda: ch.queue_declare(
            dlq, passive=True).method.message_count == 1)

        _go(console, f"#/dlq/%2F/{urllib.parse.quote(dlq)}", '[data-action="replay"]')
        console.find_element(By.CSS_SELECTOR, '[data-action="browse"]').click()
        _wait(console, lambda d: "order-42" in d.find_element(By.CSS_SELECTOR, "table").text,
              "the dead letter listed")
        assert f"rejected in {work}" in console.find_element(By.CSS_SELECTOR, "table").text
        _shot(console, "dlq")
        console.find_element(By.CSS_SELECTOR, '[data-action="replay"]').click()
        # The replayed message arrives at a consumer of the queue it died in.
        got = helpers.wait_for("the replayed message", lambda: (
            lambda r: r if r[0] else None)(ch.basic_get(work, auto_ack=True)))
        assert got[2] == b"order-42"
        assert ch.queue_declare(dlq, passive=True).method.message_count == 0
    finally:
        conn.close()


def test_close_a_connection_and_the_client_notices(console, ferry):
    from selenium.webdriver.common.by import By

    name = helpers.unique("console-closeme")
    conn = _pika(ferry, name)
    try:
        _go(console, "#/connections", "table")
        button = _wait(console, lambda d: [
            b for b in d.find_elements(By.CSS_SELECTOR, '[data-action="close"]')
            if name in b.find_element(By.XPATH, "./ancestor::tr").text], "the connection listed")
        _shot(console, "connections")
        button[0].click()
        alert = console.switch_to.alert
        alert.send_keys("console test")
        alert.accept()
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.2)
        assert closed.value.reply_code == 320
        assert "console test" in closed.value.reply_text
    finally:
        if conn.is_open:
            conn.close()


def test_a_monitoring_user_cannot_purge(browser, ferry):
    from selenium.webdriver.common.by import By

    viewer = helpers.unique("viewer")
    status, _ = _api(ferry, "PUT", f"/api/users/{viewer}",
                     {"password": "look-only", "tags": "monitoring"})
    assert status in (201, 204), status
    queue = helpers.unique("console-readonly")
    conn = _pika(ferry)
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True)
        ch.basic_publish("", queue, b"keep me")
        browser.get(f"{ferry.http}/")
        browser.execute_script("sessionStorage.clear()")
        browser.get(f"{ferry.http}/")
        _login(browser, viewer, "look-only")
        assert "read-only" in browser.find_element(By.ID, "whoami").text
        _go(browser, f"#/queues/%2F/{urllib.parse.quote(queue)}", '[data-action="purge"]')
        purge = browser.find_element(By.CSS_SELECTOR, '[data-action="purge"]')
        assert not purge.is_enabled()
        assert not browser.find_element(By.CSS_SELECTOR, '[data-action="publish"]').is_enabled()
        _shot(browser, "queue-read-only")
        # The API refuses the purge too, and the message stays.
        status, body = _api(ferry, "POST", f"/api/queues/%2F/{urllib.parse.quote(queue)}/purge",
                            user=viewer, password="look-only")
        assert status == 403, body
        assert ch.queue_declare(queue, passive=True).method.message_count == 1
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        conn.close()


def test_bridges_page_shows_a_bridge_made_through_the_api(console, ferry):
    name = helpers.unique("console-bridge")
    src = helpers.unique("console-bridge-src")
    dest = helpers.unique("console-bridge-dest")
    status, _ = _api(ferry, "PUT", f"/api/parameters/shovel/%2F/{name}",
                     {"value": {"src-queue": src, "dest-queue": dest}})
    assert status in (201, 204), status
    conn = _pika(ferry, "console-bridge-publisher")
    try:
        ch = conn.channel()
        ch.queue_declare(src, durable=True)
        for i in range(2):
            ch.basic_publish("", src, f"bridged-{i}".encode())
        helpers.wait_for("the bridge forwarding both messages", lambda: (
            lambda s: s[0] == 200 and s[1]["messages_forwarded"] == 2)(
                _api(ferry, "GET", f"/api/shovels/vhost/%2F/{name}")))
        _go(console, "#/bridges", "table")
        key = f"//{name}"  # rows are keyed vhost/name, and the vhost is "/"
        _wait(console, lambda d: name in _row_text(d, key), "the bridge listed")
        row = _row_text(console, key)
        assert "running" in row and src in row and dest in row, row
        assert " 2 " in f" {row} ", row
        _shot(console, "bridges")
    finally:
        conn.close()
        _api(ferry, "DELETE", f"/api/parameters/shovel/%2F/{name}")


def test_schemas_page_shows_a_registered_schema_and_the_catalog(console, ferry):
    topic = helpers.unique("console-events")
    subject = f"{topic}-value"  # TopicNameStrategy, so the catalog links the schema
    schema = json.dumps({"type": "record", "name": "Order", "namespace": "console.test",
                         "fields": [{"name": "id", "type": "string"}]})
    status, registered = _api(ferry, "POST", f"/subjects/{urllib.parse.quote(subject)}/versions",
                              {"schema": schema})
    assert status == 200, registered
    event_type = helpers.unique("console.order.created")
    _produce(ferry, topic, 2, headers=[("ce_type", event_type.encode())])
    helpers.wait_for("the event catalogued", lambda: any(
        e["type"] == event_type for e in _api(ferry, "GET", "/api/catalog")[1]["events"]))

    _go(console, "#/schemas", "table")
    _wait(console, lambda d: subject in _row_text(d, subject), "the subject listed")
    row = _row_text(console, subject)
    assert "AVRO" in row and str(registered["id"]) in row, row
    _wait(console, lambda d: topic in _row_text(d, event_type), "the event type with its topic")
    assert f"{subject} v1 (AVRO)" in _row_text(console, event_type)
    _shot(console, "schemas")


def test_every_page_renders_in_light_dark_and_at_phone_width(console, ferry):
    from selenium.webdriver.common.by import By

    group = helpers.unique("console-group")
    topic = helpers.unique("console-pages")
    _produce(ferry, topic, 2)
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": ferry.bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "client.id": "console-reader"})
    c.subscribe([topic])
    helpers.wait_for("a record", lambda: (lambda m: m if m and not m.error() else None)(
        c.poll(1.0)))
    c.commit(asynchronous=False)
    try:
        pages = [
            ("#/overview", '[data-card="publish"]', "overview"),
            ("#/exchanges", "[data-graph] svg", "exchanges"),
            ("#/groups", "table", "groups"),
            (f"#/groups/{group}", '[data-chart="group-lag"]', "group"),
            ("#/dlq", "select", "dlq-list"),
            ("#/alerts", "table", "alerts"),
        ]
        for hash_path, marker, name in pages:
            _go(console, hash_path, marker)
            time.sleep(0.3)  # let the first poll fill the page before the picture
            _shot(console, name)
        _go(console, f"#/groups/{group}", "tr")
        _wait(console, lambda d: "console-reader" in d.find_element(By.TAG_NAME, "main").text,
              "the member's client id")
        console.find_element(By.CSS_SELECTOR, "select[name='to']").send_keys("earliest")
        console.find_element(By.ID, "theme").click()
        assert console.execute_script("return document.documentElement.dataset.theme") == "dark"
        _go(console, "#/overview", '[data-card="publish"]')
        time.sleep(0.3)
        _shot(console, "overview-dark")
        console.set_window_size(390, 844)
        _go(console, "#/queues", "table")
        time.sleep(0.3)
        _shot(console, "queues-phone")
        width = console.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390 + 1, f"the page scrolls sideways at phone width ({width}px)"
        console.find_element(By.ID, "menu-toggle").click()
        _shot(console, "menu-phone")
    finally:
        c.close()
        console.set_window_size(1280, 800)
        console.execute_script("localStorage.setItem('ferry-theme', 'light')")
