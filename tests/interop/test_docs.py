"""The README's and docs/*.md's examples, run as written and in order against a fresh broker.

Every fenced block tagged `sh`/`bash`/`console` or `python` is collected from each document in
the order it appears, and the blocks of one document run one after the other against one fresh
`ferry serve` (its own data directory and OS-picked ports), so an example that only works after
an earlier one still passes, and an example that stops working fails CI.

How a block runs:
- Shell blocks run with `bash -euo pipefail` in a scratch directory that is kept for the whole
  document, with `ferry` on PATH (the binary under test). Each line must succeed.
- Python blocks run in one namespace per document, so a later block may use the names of an
  earlier one, as a reader pasting them into one interpreter would.
- The documented addresses (`localhost:9092`, `127.0.0.1:8080`, `localhost:5672`, ...) are
  rewritten to the broker's, and FERRY_BOOTSTRAP / FERRY_ADMIN_URL point the CLI at it.
- A block that cannot run here is preceded by `<!-- docs-test: skip (reason) -->` (building
  the binary, starting a second broker on the default ports, `docker run`, long benchmarks).
- Names the prose deliberately leaves to the application (`valid`, `bill`, `provider`,
  `TransientError`, `price_of`) are given simple stand-ins below, and pika's
  `start_consuming()` returns after it has been idle for a moment instead of running forever.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from conftest import REPO, _start_ferry, _stop_ferry

SHELL = {"sh", "bash", "console", "shell"}
FENCE = re.compile(r"^```([A-Za-z]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\b")
BLOCK_TIMEOUT = 90


def documents() -> list[Path]:
    docs = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
    return [d for d in docs if d.exists()]


def blocks(doc: Path) -> list[tuple[int, str, str]]:
    """(line, language, code) of every runnable fenced block, in document order."""
    text = doc.read_text()
    found = []
    for m in FENCE.finditer(text):
        lang = m.group(1).lower()
        if lang not in SHELL and lang != "python":
            continue
        before = text[:m.start()].rstrip().rsplit("\n", 1)[-1]
        if SKIP.search(before):
            continue
        line = text.count("\n", 0, m.start()) + 1
        found.append((line, "python" if lang == "python" else "sh", m.group(2)))
    return found


def substitute(code: str, broker) -> str:
    kafka, amqp = broker.bootstrap, broker.amqp_addr
    http = broker.http.removeprefix("http://")
    for host in ("localhost", "127.0.0.1"):
        code = code.replace(f"{host}:9092", kafka)
        code = code.replace(f"{host}:5672", amqp)
        code = code.replace(f"{host}:8080", http)
    return code


# --- stand-ins for what the examples leave to the application ------------------------------------

class TransientError(Exception):
    pass


class _Provider:
    def charge(self, body: bytes) -> None:
        pass


def _stand_ins() -> dict:
    return {
        "__name__": "__docs__",
        "valid": lambda body: not body.startswith(b"bad"),
        "bill": lambda body: None,
        "provider": _Provider(),
        "TransientError": TransientError,
        "price_of": lambda body: b"1.08",
    }


def _bounded_start_consuming(self: BlockingChannel) -> None:
    """Deliver what arrives for two seconds, then return (the documented call runs forever)."""
    self.connection.process_data_events(time_limit=2)


def _assert_documents_collected():
    docs = {d.name: blocks(d) for d in documents()}
    # The collector must see the README's quickstart; a broken fence regex would pass vacuously.
    assert any(lang == "sh" and "kcat" in code for _, lang, code in docs["README.md"]), docs
    assert any(lang == "python" for _, lang, code in docs["README.md"]), docs


def test_the_collector_finds_the_quickstart():
    _assert_documents_collected()


@pytest.mark.kcat
@pytest.mark.parametrize("doc", documents(), ids=lambda d: str(d.relative_to(REPO)))
def test_examples_run_as_written(doc: Path, request, monkeypatch):
    if request.config.getoption("--kafka-bootstrap") or request.config.getoption("--amqp-url"):
        pytest.skip("the documents' examples need Ferry (admin CLI, both protocols)")
    runnable = blocks(doc)
    if not runnable:
        pytest.skip(f"{doc.name} has no runnable examples")
    binary = Path(request.config.getoption("--ferry-bin") or
                  Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug" / "ferry")
    if not binary.is_absolute():
        binary = (REPO / binary).resolve()
    monkeypatch.setattr(BlockingChannel, "start_consuming", _bounded_start_consuming)
    with tempfile.TemporaryDirectory(prefix="ferry-docs-") as tmp:
        broker = _start_ferry(binary, Path(tmp))
        try:
            workdir = Path(tmp) / "work"
            workdir.mkdir()
            bindir = Path(tmp) / "bin"
            bindir.mkdir()
            (bindir / "ferry").symlink_to(binary)
            env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
            env.update(PATH=f"{bindir}:{env.get('PATH', '')}", NO_COLOR="1",
                       FERRY_BOOTSTRAP=broker.bootstrap, FERRY_ADMIN_URL=broker.http)
            namespace = _stand_ins()
            for line, lang, code in runnable:
                code = substitute(code, broker)
                where = f"{doc.relative_to(REPO)}:{line}"
                if lang == "sh":
                    try:
                        run = subprocess.run(["bash", "-euo", "pipefail", "-c", code],
                                             cwd=workdir, env=env, capture_output=True,
                                             text=True, timeout=BLOCK_TIMEOUT)
                    except subprocess.TimeoutExpired as e:
                        pytest.fail(f"{where}: the shell example did not finish within "
                                    f"{BLOCK_TIMEOUT} s:\n{code}\nstdout:\n{e.stdout}")
                    if run.returncode != 0:
                        pytest.fail(f"{where}: the shell example failed (exit "
                                    f"{run.returncode}):\n{code}\nstdout:\n{run.stdout}\n"
                                    f"stderr:\n{run.stderr}")
                else:
                    cwd = os.getcwd()
                    os.chdir(workdir)
                    try:
                        exec(compile(code, where, "exec"), namespace)
                    except Exception as e:  # noqa: BLE001 - reported with the block
                        pytest.fail(f"{where}: the Python example raised {e!r}:\n{code}")
                    finally:
                        os.chdir(cwd)
        finally:
            for value in list(locals().get("namespace", {}).values()):
                if isinstance(value, BlockingChannel) and value.connection.is_open:
                    value.connection.close()
            _stop_ferry(broker)
