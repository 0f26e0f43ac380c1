"""kcat (librdkafka's command-line client, Debian package kcat) against the broker."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

import helpers

pytestmark = pytest.mark.kcat


@pytest.fixture(scope="module")
def kcat() -> str:
    path = shutil.which("kcat")
    if path is None:
        pytest.fail("kcat is not on PATH: `apt-get install kcat`, or deselect with -m 'not kcat'",
                    pytrace=False)
    return path


def run(cmd: list[str], stdin: str | None = None, timeout: float = 60) -> str:
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stderr}"
    return done.stdout


def test_produce_with_keys_and_consume_back(broker, new_topic, kcat):
    topic = new_topic(partitions=1)
    lines = [f"key-{i % 3}:value {i} with spaces: and a colon" for i in range(50)]
    lines.append(":value with an empty key")
    run([kcat, "-b", broker.bootstrap, "-P", "-t", topic, "-K:", "-z", "snappy",
         "-X", "enable.idempotence=false"], stdin="\n".join(lines) + "\n")

    out = run([kcat, "-b", broker.bootstrap, "-C", "-t", topic, "-o", "beginning", "-e",
               "-q", "-f", "%k\t%s\t%o\n"])
    got = [line.split("\t") for line in out.splitlines()]
    expected = []
    for i, line in enumerate(lines):
        key, value = line.split(":", 1)  # -K: splits at the first delimiter
        expected.append([key, value, str(i)])
    assert got == expected

    # The same records through -K: on the consuming side.
    out = run([kcat, "-b", broker.bootstrap, "-C", "-t", topic, "-o", "beginning", "-e",
               "-q", "-K:"])
    assert out.splitlines() == lines


def test_metadata_listing(broker, new_topic, kcat):
    topic = new_topic(partitions=3)
    out = run([kcat, "-b", broker.bootstrap, "-L", "-t", topic])
    assert f'topic "{topic}" with 3 partitions:' in out, out
    for p in range(3):
        assert f"partition {p}, leader " in out
    host, port = helpers.split_hostport(broker.bootstrap)

    md = json.loads(run([kcat, "-b", broker.bootstrap, "-L", "-J"]))
    topics = {t["topic"]: t for t in md["topics"]}
    assert topic in topics
    assert sorted(p["partition"] for p in topics[topic]["partitions"]) == [0, 1, 2]
    broker_ids = {b["id"] for b in md["brokers"]}
    assert all(p["leader"] in broker_ids for p in topics[topic]["partitions"])
    assert md["controllerid"] in broker_ids
    if broker.is_ferry:
        # Ferry advertises the address it listens on.
        assert [b["name"] for b in md["brokers"]] == [f"{host}:{port}"]
        assert f"broker {md['brokers'][0]['id']} at {host}:{port}" in out
