#!/usr/bin/env python3
"""Measure the demo chain on a local server: time from a pipeline start to
the first product of that run, and the event rate the SSE stream sustains.

Starts target/release/filiere (or --binary) on a loopback port with a fresh
SQLite file, runs a bounded number of pipelines, prints the figures and
stops the server. Loopback only; every wait has a time limit.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def request(base, method, path, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def wait_healthy(base, limit=30):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            request(base, "GET", "/health", timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"server at {base} not healthy after {limit} s")


class EventReader(threading.Thread):
    """Reads the SSE stream and records (arrival time, envelope) pairs."""

    def __init__(self, base, limit):
        super().__init__(daemon=True)
        self.base = base
        self.limit = limit
        self.events = []
        self.lock = threading.Lock()

    def run(self):
        deadline = time.monotonic() + self.limit
        with urllib.request.urlopen(self.base + "/api/events", timeout=self.limit) as response:
            data = []
            for raw in response:
                line = raw.decode().rstrip("\n")
                if line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif line == "" and data:
                    envelope = json.loads("".join(data))
                    data = []
                    with self.lock:
                        self.events.append((time.monotonic(), envelope))
                if time.monotonic() > deadline:
                    return

    def first(self, predicate, limit):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with self.lock:
                for arrival, envelope in self.events:
                    if predicate(envelope["event"]):
                        return arrival
            time.sleep(0.005)
        return None


def click_to_product(base, reader, runs, pipeline):
    figures = []
    for _ in range(runs):
        started = time.monotonic()
        run_id = request(base, "POST", "/api/control/pipeline/start", pipeline)["run_id"]
        arrival = reader.first(
            lambda event: event["type"] == "product_created" and event["run_id"] == run_id, limit=60
        )
        if arrival is None:
            sys.exit(f"no product for run {run_id} within 60 s")
        figures.append(arrival - started)
        request(base, "POST", "/api/control/gavage/stop")
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default="target/release/filiere")
    parser.add_argument("--port", type=int, default=3941)
    parser.add_argument("--runs", type=int, default=5, help="pipeline runs per measure (at most 20)")
    args = parser.parse_args()
    runs = max(1, min(args.runs, 20))
    base = f"http://127.0.0.1:{args.port}"

    with tempfile.TemporaryDirectory() as directory:
        env = dict(os.environ, FILIERE_BIND=f"127.0.0.1:{args.port}", RUST_LOG="warn",
                   DATABASE_URL=f"sqlite://{directory}/bench.db", LEPTOS_OUTPUT_NAME="filiere")
        server = subprocess.Popen([args.binary], env=env)
        try:
            wait_healthy(base)
            reader = EventReader(base, limit=600)
            reader.start()
            time.sleep(0.2)

            defaults = click_to_product(base, reader, runs, {})
            fastest = click_to_product(base, reader, runs, {"gavage": {"acceleration": 1_000_000_000},
                                                            "sqal": {"interval": 0}})
            print(f"click to first product, demo defaults: median {statistics.median(defaults):.2f} s, "
                  f"range {min(defaults):.2f}-{max(defaults):.2f} s over {runs} runs")
            print(f"click to first product, fastest settings: median {statistics.median(fastest):.2f} s, "
                  f"range {min(fastest):.2f}-{max(fastest):.2f} s over {runs} runs")

            with reader.lock:
                before = len(reader.events)
            began = time.monotonic()
            request(base, "POST", "/api/control/pipeline/start",
                    {"gavage": {"nb_lots": 50, "acceleration": 1_000_000_000},
                     "sqal": {"interval": 0, "nb_samples": 20}})
            time.sleep(10)
            with reader.lock:
                received = len(reader.events) - before
            elapsed = time.monotonic() - began
            print(f"stream: {received} events in {elapsed:.1f} s = {received / elapsed:.0f} events/s "
                  f"(50 lots at the fastest acceleration, one SSE client)")
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
