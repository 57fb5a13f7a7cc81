#!/usr/bin/env python3
"""Time the whole chain headless: lot creation to graded products.

Starts the given filiere binary on a loopback port, on a fresh SQLite file
or on the empty PostgreSQL database given with --database-url. It runs the
pipeline with the fastest settings: acceleration 1,000,000,000, one sample
per lot, no wait between samples. It follows the event stream
and reports lots per second from the pipeline request to the last lot's
`lot_inspected` event, with everything stored. Loopback only; every wait
has a time limit.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request

from trace_load import request, start_server

LOTS = 50


def time_run(base, limit):
    """Starts one pipeline run and returns (seconds to the last inspected lot, lots)."""
    stream = urllib.request.urlopen(base + "/api/events", timeout=limit)
    started = time.monotonic()
    _, answer = request(base, "POST", "/api/control/pipeline/start", {
        "gavage": {"nb_lots": LOTS, "acceleration": 1000000000},
        "sqal": {"interval": 0, "nb_samples": 1},
        "monitor": {"polling_interval": 0.5},
    })
    run_id = answer["run_id"]
    run_lots, inspected = set(), set()
    for line in stream:
        if time.monotonic() - started > limit:
            sys.exit(f"run {run_id} not inspected after {limit} s")
        if not line.startswith(b"data: "):
            continue
        event = json.loads(line[6:])["event"]
        if event["type"] == "lot_created" and event["run_id"] == run_id:
            run_lots.add(event["lot"]["code_lot"])
        elif event["type"] == "lot_inspected" and event["code_lot"] in run_lots:
            inspected.add(event["code_lot"])
            if len(inspected) == LOTS:
                elapsed = time.monotonic() - started
                stream.close()
                return elapsed, len(inspected)
    sys.exit("event stream ended")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default="target/release/filiere")
    parser.add_argument("--port", type=int, default=3981)
    parser.add_argument("--database-url", default=None, help="an empty PostgreSQL database; SQLite when absent")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} is missing: build it first")

    base = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as scratch:
        database_url = args.database_url or f"sqlite://{scratch}/chain.db"
        server = start_server(args.binary, args.port, database_url)
        try:
            rates = []
            for run in range(args.runs):
                seconds, lots = time_run(base, limit=120)
                rates.append(lots / seconds)
                print(f"run {run + 1}: {lots} lots in {seconds:.2f} s, {lots / seconds:.1f} lots/s")
            print(f"{'PostgreSQL' if args.database_url else 'SQLite'}: median {statistics.median(rates):.1f} lots/s, "
                  f"range {min(rates):.1f}-{max(rates):.1f}")
        finally:
            server.terminate()
            server.wait(timeout=15)


if __name__ == "__main__":
    main()
