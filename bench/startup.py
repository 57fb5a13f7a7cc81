#!/usr/bin/env python3
"""Time the server from exec to a healthy /health on an existing database,
and read its resident memory once idle.

Creates the database with a first start and a short pipeline run, stops
the server, then starts it --runs times on that database. Loopback only;
every wait has a time limit.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def healthy(base):
    try:
        with urllib.request.urlopen(base + "/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def start(binary, env, base, limit=30):
    began = time.monotonic()
    server = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not healthy(base):
        if time.monotonic() - began > limit:
            server.kill()
            sys.exit(f"server not healthy after {limit} s")
        time.sleep(0.005)
    return server, time.monotonic() - began


def resident_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default="target/release/filiere")
    parser.add_argument("--port", type=int, default=3953)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as scratch:
        env = dict(os.environ, DATABASE_URL=f"sqlite://{scratch}/start.db",
                   FILIERE_BIND=f"127.0.0.1:{args.port}", RUST_LOG="warn")
        server, _ = start(args.binary, env, base)
        request = urllib.request.Request(
            base + "/api/control/pipeline/start", method="POST",
            data=b'{"gavage":{"nb_lots":5,"acceleration":10000000},"sqal":{"interval":0.01}}',
            headers={"content-type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()
        time.sleep(3)
        server.terminate()
        server.wait(timeout=15)

        times, idle = [], []
        for _ in range(args.runs):
            server, took = start(args.binary, env, base)
            times.append(took)
            time.sleep(2)
            idle.append(resident_mb(server.pid))
            server.terminate()
            server.wait(timeout=15)
        print(f"start to healthy: median {statistics.median(times) * 1000:.0f} ms, "
              f"range {min(times) * 1000:.0f}-{max(times) * 1000:.0f} ms over {args.runs} starts")
        print(f"idle resident memory after 2 s: median {statistics.median(idle):.1f} MB, "
              f"range {min(idle):.1f}-{max(idle):.1f} MB")


if __name__ == "__main__":
    main()
