#!/usr/bin/env python3
"""Bridge throughput, end to end: how fast a bridge drains a preloaded Ferry queue into its
destination, next to what a plain pipelined publisher gets from that destination alone.

  python3 benches/bridge.py kafka              # Ferry queue -> a second Ferry acting as Kafka
  python3 benches/bridge.py amqp --dest amqp://guest:guest@127.0.0.1:5676/%2f \
      --rabbitmq-node ferry-bridge@localhost  # Ferry queue -> RabbitMQ

It starts the bridging Ferry (and, for `kafka`, the destination Ferry) from --ferry (default
target/release/ferry) on loopback ports the OS picks, with temporary data directories. Each
round then:

1. preloads N persistent messages of --size bytes into a fresh Ferry queue with `ferry bench
   amqp --no-consumer` (which keeps the queue);
2. runs the baseline: `ferry bench kafka` (1 partition, produce acks=all) against the
   destination Ferry, or `ferry bench amqp --no-consumer --window 1000` against RabbitMQ;
3. defines the bridge (`PUT /api/parameters/shovel/%2F/NAME`, ack-mode on-confirm) and polls
   its status every 20 ms until `messages_forwarded` reaches N. With on-confirm a message
   counts as forwarded only once the destination confirmed it (Kafka acks=all, a RabbitMQ
   publisher confirm), so that is the time until the destination holds all N. The bridge is
   then deleted. `msg_per_s` counts from the definition (start-up included: connecting,
   librdkafka's metadata probe); `steady_msg_per_s` from the first poll that saw messages
   forwarded.

It prints one line per round and one JSON document at the end: msg/s and MB/s (bodies, 10^6
bytes) of the baseline and of the bridge, and the CPU (user + system, % of one core) of the
bridging Ferry, of the destination Ferry and, with --rabbitmq-pid or --rabbitmq-node, of
RabbitMQ during the bridge's run. Run it while nothing else builds (the figures in
docs/bridges.md were taken holding the shared cargo lock).
"""

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

READY_RE = re.compile(
    r"ferry is ready kafka_addr=(?P<kafka>\S+) amqp_addr=(?P<amqp>\S+) http_addr=(?P<http>\S+)")
TICK = os.sysconf("SC_CLK_TCK")


class Ferry:
    """A `ferry serve` on loopback ports the OS picks, stopped with SIGTERM."""

    def __init__(self, binary, workdir, name):
        self.dir = os.path.join(workdir, name)
        os.makedirs(os.path.join(self.dir, "data"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
        env.update(NO_COLOR="1", RUST_LOG="warn,ferry=info")
        self.log = os.path.join(self.dir, "ferry.log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, "serve", "--data-dir", os.path.join(self.dir, "data"),
                 "--kafka-listen", "127.0.0.1:0", "--amqp-listen", "127.0.0.1:0",
                 "--native-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=self.dir)
        deadline = time.monotonic() + 60
        while True:
            with open(self.log, errors="replace") as f:
                m = READY_RE.search(f.read())
            if m:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"{name}: ferry did not become ready; see {self.log}")
            time.sleep(0.05)
        self.kafka, self.amqp = m["kafka"], m["amqp"]
        self.http = f"http://{m['http']}"
        self.amqp_url = f"amqp://guest:guest@{self.amqp}/%2f"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def admin(self, method, path, body=None):
        req = urllib.request.Request(self.http + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
        req.add_header("Authorization", "Basic " + base64.b64encode(b"admin:admin").decode())
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
            return json.loads(text) if text else None


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid` (None when unreadable)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return None


def bench_json(ferry_bin, args):
    out = subprocess.run([ferry_bin, "bench", *args, "--json"], check=True,
                         stdout=subprocess.PIPE, env={k: v for k, v in os.environ.items()
                                                      if not k.startswith("FERRY_")})
    return json.loads(out.stdout)


def preload(ferry_bin, src, n, size):
    report = bench_json(ferry_bin, ["amqp", "-b", src.amqp_url, "--size", str(size),
                                    "--messages", str(n), "--window", "1000", "--no-consumer"])
    case = report["cases"][0]
    return case["queue"], case["publish"]


def baseline(ferry_bin, mode, dest, n, size, rabbitmq_node):
    if mode == "kafka":
        report = bench_json(ferry_bin, ["kafka", "-b", dest, "--sizes", str(size),
                                        "--records", str(n), "--partitions", "1",
                                        "--latency-rate", "0"])
        p = report["cases"][0]["produce"]
        return {"msg_per_s": round(p["records_per_sec"]), "mb_per_s": round(p["mb_per_sec"], 1)}
    report = bench_json(ferry_bin, ["amqp", "-b", dest, "--size", str(size), "--messages", str(n),
                                    "--window", "1000", "--no-consumer"])
    case = report["cases"][0]
    rabbitmqctl(rabbitmq_node, "delete_queue", case["queue"])
    p = case["publish"]
    return {"msg_per_s": round(p["messages_per_sec"]), "mb_per_s": round(p["mb_per_sec"], 1)}


def rabbitmqctl(node, *args):
    """Runs rabbitmqctl against `node` (to delete what a round left in RabbitMQ)."""
    if node is None:
        return ""
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    out = subprocess.run([ctl, "-n", node, "-q", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    return out.stdout.strip()


def run_bridge(src, name, n, value, pids, perf=None):
    recorder = None
    if perf:
        # A flat profile of every process measured (the release build keeps its symbols).
        recorder = subprocess.Popen(["perf", "record", "-q", "-F", "499", "-o", perf, "-p",
                                     ",".join(str(p) for p in pids.values())],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    start = time.monotonic()
    src.admin("PUT", f"/api/parameters/shovel/%2F/{name}", {"value": value})
    first = None  # (time, count) at the first poll that saw messages forwarded
    while True:
        s = src.admin("GET", f"/api/shovels/vhost/%2F/{name}")
        now = time.monotonic()
        if first is None and s["messages_forwarded"] > 0:
            first = (now, s["messages_forwarded"])
        if s["messages_forwarded"] >= n:
            break
        if now - start > 600:
            sys.exit(f"bridge {name} stalled: {s}")
        time.sleep(0.02)
    seconds = now - start
    after = {k: cpu_seconds(p) for k, p in pids.items()}
    if recorder is not None:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=60)
    src.admin("DELETE", f"/api/parameters/shovel/%2F/{name}")
    cpu = {k: round(100 * (after[k] - before[k]) / seconds)
           for k in pids if before[k] is not None and after[k] is not None}
    # Past the start-up (connecting, librdkafka's metadata probe): the rate while moving.
    steady = None
    if first is not None and now > first[0] and n > first[1]:
        steady = (n - first[1]) / (now - first[0])
    return seconds, steady, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["kafka", "amqp"])
    ap.add_argument("--ferry", default="target/release/ferry")
    ap.add_argument("--dest", help="amqp: the RabbitMQ URL (required for amqp)")
    ap.add_argument("--rabbitmq-node", help="RabbitMQ node name, to delete the round's queues "
                    "and read its CPU (rabbitmqctl -n NODE)")
    ap.add_argument("--rabbitmq-pid", type=int, help="RabbitMQ's process id, for its CPU")
    ap.add_argument("--messages", type=int, help="per round (default: 200000 kafka, 50000 amqp)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--prefetch", type=int, help="src-prefetch-count (default: the bridge's)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--perf", metavar="FILE", help="record a `perf` profile of the brokers "
                    "during each bridge run into FILE.<round>")
    a = ap.parse_args()
    if a.mode == "amqp" and not a.dest:
        ap.error("amqp needs --dest amqp://... (the RabbitMQ)")
    n = a.messages or (200_000 if a.mode == "kafka" else 50_000)
    ferry_bin = os.path.abspath(a.ferry)
    workdir = tempfile.mkdtemp(prefix="ferry-bridge-bench-")
    brokers = []
    try:
        src = Ferry(ferry_bin, workdir, "source")
        brokers.append(src)
        pids = {"source_ferry": src.proc.pid}
        if a.mode == "kafka":
            dst = Ferry(ferry_bin, workdir, "dest")
            brokers.append(dst)
            pids["dest_ferry"] = dst.proc.pid
            dest = dst.kafka
        else:
            dest = a.dest
            rpid = a.rabbitmq_pid
            if rpid is None and a.rabbitmq_node:
                pid = rabbitmqctl(a.rabbitmq_node, "eval", "os:getpid().").strip('"')
                rpid = int(pid) if pid.isdigit() else None
            if rpid is not None:
                pids["rabbitmq"] = rpid
        rounds = []
        for r in range(a.rounds):
            queue, loaded = preload(ferry_bin, src, n, a.size)
            base = None if a.no_baseline else baseline(ferry_bin, a.mode, dest, n, a.size,
                                                       a.rabbitmq_node)
            name = f"bench-{r}"
            value = {"src-queue": queue, "ack-mode": "on-confirm"}
            if a.mode == "kafka":
                value.update({"dest-uri": f"kafka://{dest}", "dest-topic": f"bridge-bench-{r}"})
            else:
                value.update({"dest-uri": dest, "dest-queue": f"bridge.bench.{r}"})
            if a.prefetch:
                value["src-prefetch-count"] = a.prefetch
            perf = a.perf and f"{a.perf}.{r + 1}"
            seconds, steady, cpu = run_bridge(src, name, n, value, pids, perf)
            if a.mode == "amqp":
                rabbitmqctl(a.rabbitmq_node, "delete_queue", f"bridge.bench.{r}")
            src.admin("DELETE", f"/api/queues/%2F/{urllib.parse.quote(queue, safe='')}")
            row = {"round": r + 1, "messages": n, "size": a.size,
                   "preload_msg_per_s": round(loaded["messages_per_sec"]),
                   "baseline": base,
                   "bridge": {"seconds": round(seconds, 2), "msg_per_s": round(n / seconds),
                              "mb_per_s": round(n * a.size / seconds / 1e6, 1),
                              "steady_msg_per_s": steady and round(steady),
                              "steady_mb_per_s": steady and round(steady * a.size / 1e6, 1),
                              "cpu_percent": cpu}}
            if base:
                row["bridge_vs_baseline"] = round(n / seconds / base["msg_per_s"], 2)
            rounds.append(row)
            b = row["bridge"]
            print(f"round {r + 1}: bridge {b['msg_per_s']} msg/s {b['mb_per_s']} MB/s "
                  f"(steady {b['steady_msg_per_s']} msg/s {b['steady_mb_per_s']} MB/s) "
                  f"cpu {cpu}; baseline {base}", file=sys.stderr)
        print(json.dumps({"mode": a.mode, "prefetch": a.prefetch, "rounds": rounds}, indent=1))
    finally:
        for b in brokers:
            b.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
