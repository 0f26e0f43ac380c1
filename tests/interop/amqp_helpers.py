"""Helpers for the AMQP 0-9-1 cases (pika): connections, fresh names, draining queues."""

from __future__ import annotations

import time
from typing import Callable, Optional

import pika
from pika.adapters.blocking_connection import BlockingChannel

import helpers


def connect(url: str) -> pika.BlockingConnection:
    params = pika.URLParameters(url)
    params.connection_attempts = 3
    params.retry_delay = 0.5
    params.socket_timeout = 10
    params.blocked_connection_timeout = 30
    return pika.BlockingConnection(params)


def name(request, suffix: str = "") -> str:
    return helpers.unique(request.node.name + (f"-{suffix}" if suffix else ""))


def get_all(ch: BlockingChannel, queue: str, expect: int, timeout: float = 10.0,
            ack: bool = True) -> list[tuple]:
    """basic.get until `expect` messages arrived (or `timeout`); returns (method, props, body)
    tuples. Does not wait for more once `expect` is reached."""
    out: list[tuple] = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        method, props, body = ch.basic_get(queue, auto_ack=False)
        if method is None:
            time.sleep(0.02)
            continue
        if ack:
            ch.basic_ack(method.delivery_tag)
        out.append((method, props, body))
    return out


def bodies(ch: BlockingChannel, queue: str, expect: int, timeout: float = 10.0) -> list[bytes]:
    return [b for _, _, b in get_all(ch, queue, expect, timeout)]


def assert_empty(ch: BlockingChannel, queue: str, settle: float = 0.2) -> None:
    """Nothing (more) is in `queue` after `settle` seconds."""
    time.sleep(settle)
    method, _, body = ch.basic_get(queue, auto_ack=True)
    assert method is None, f"{queue} unexpectedly holds {body!r}"


def message_count(ch: BlockingChannel, queue: str) -> int:
    return ch.queue_declare(queue, passive=True).method.message_count


def pump(conns: list[pika.BlockingConnection], until: Callable[[], bool],
         timeout: float = 10.0) -> bool:
    """Runs the I/O loops of `conns` (whose consumers append to lists) until `until()`."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            return False
        for c in conns:
            c.process_data_events(time_limit=0.02)
    return True


def settle(conns: list[pika.BlockingConnection], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for c in conns:
            c.process_data_events(time_limit=0.02)


def text(v) -> Optional[str]:
    """pika hands long strings back as str or bytes depending on the content; compare as str."""
    if isinstance(v, bytes):
        return v.decode()
    return v
