#!/usr/bin/env python3
"""Load the consumer trace page and /health with wrk on a local server.

Starts the given filiere binary on a loopback port with a fresh SQLite
file and runs one pipeline so that products exist. Then it runs wrk for a
fixed time per target while the simulators keep going. It prints
throughput, latency percentiles, errors and the server's peak resident
memory. With --ceiling it also loads an axum server that returns the same
page's bytes from memory (server/examples/memory_page.rs), in the same
run, and prints the trace page's share of that ceiling.
Loopback only; wrk runs for --duration seconds per target and every wait
has a time limit.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request


def request(base, method, path, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return response.status, json.loads(response.read() or b"null")


def wait_for(check, limit, what):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"{what} not ready after {limit} s")


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def to_ms(value, unit):
    """Converts a wrk latency to milliseconds."""
    if unit == "us":
        return value / 1000
    if unit == "s":
        return value * 1000
    return value


def run_wrk(url, connections, duration, threads, script=None):
    """Runs wrk against url, with an optional Lua script, and returns
    requests/s, p50/p90/p99 in ms and errors."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    if script:
        command += ["-s", script]
    output = subprocess.run(
        command + [url],
        capture_output=True, text=True, timeout=duration + 30, check=True,
    ).stdout
    figures = {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}
    for percentile in ("50", "90", "99"):
        match = re.search(rf"^\s+{percentile}(?:\.000)?%\s+([\d.]+)(us|ms|s)", output, re.M)
        figures[f"p{percentile}_ms"] = to_ms(float(match.group(1)), match.group(2))
    errors = 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        errors += sum(int(count) for count in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    figures["errors"] = errors
    return figures


def start_server(binary, port, database_url):
    """Starts the server on a loopback port and database, and returns the
    process once /health returns 200."""
    env = dict(os.environ, DATABASE_URL=database_url,
               LEPTOS_SITE_ADDR=f"127.0.0.1:{port}", RUST_LOG="warn")
    env.setdefault("LEPTOS_SITE_ROOT", "target/site")
    server = subprocess.Popen([binary], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: request(base, "GET", "/health", timeout=1)[0] == 200, 30, "server")
    except SystemExit:
        server.terminate()
        raise
    return server


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default="target/release/filiere")
    parser.add_argument("--port", type=int, default=3951)
    parser.add_argument("--connections", type=int, nargs="+", default=[64])
    parser.add_argument("--duration", type=int, default=20, help="seconds of load per target")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lots", type=int, default=20, help="lots of the pipeline run during the load")
    parser.add_argument("--samples", type=int, default=20, help="samples per lot, one every 0.05 s")
    parser.add_argument("--ceiling", default=None, metavar="BINARY",
                        help="memory_page example binary (target/release/examples/memory_page) to load as the ceiling")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install wrk")
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} is missing: build it first (cargo leptos build --release)")

    base = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as scratch:
        env = dict(os.environ, DATABASE_URL=f"sqlite://{scratch}/load.db",
                   LEPTOS_SITE_ADDR=f"127.0.0.1:{args.port}", RUST_LOG="warn")
        env.setdefault("LEPTOS_SITE_ROOT", "target/site")
        server = subprocess.Popen([args.binary], env=env)
        try:
            wait_for(lambda: request(base, "GET", "/health", timeout=1)[0] == 200, 30, "server")
            request(base, "POST", "/api/control/pipeline/start", {
                "gavage": {"nb_lots": args.lots, "acceleration": 259200},
                "sqal": {"interval": 0.05, "nb_samples": args.samples},
            })
            status, latest = wait_for(lambda: request(base, "GET", "/api/consumer/latest-product", timeout=2), 60, "first product")
            token = latest["product"]["token"]
            page = urllib.request.urlopen(f"{base}/trace/{token}", timeout=5).read()
            print(f"trace page: {len(page)} bytes")
            targets = [("trace page", base + f"/trace/{token}"), ("/health", base + "/health")]
            ceiling = None
            if args.ceiling:
                page_file = os.path.join(scratch, "page.html")
                with open(page_file, "wb") as out:
                    out.write(page)
                ceiling_port = args.port + 1
                ceiling = subprocess.Popen([args.ceiling, page_file, str(ceiling_port)])
                ceiling_base = f"http://127.0.0.1:{ceiling_port}"
                wait_for(lambda: urllib.request.urlopen(ceiling_base + "/", timeout=1).status == 200, 10, "ceiling server")
                targets.append(("in memory", ceiling_base + f"/trace/{token}"))
            try:
                for connections in args.connections:
                    rates = {}
                    for name, url in targets:
                        figures = run_wrk(url, connections, args.duration, args.threads)
                        rates[name] = figures["requests_per_s"]
                        print(f"{name:10} c={connections:<4} {figures['requests_per_s']:9.0f} req/s  "
                              f"p50 {figures['p50_ms']:.2f} ms  p90 {figures['p90_ms']:.2f} ms  "
                              f"p99 {figures['p99_ms']:.2f} ms  errors {figures['errors']}")
                    if "in memory" in rates:
                        print(f"trace page / in-memory page at c={connections}: "
                              f"{rates['trace page'] / rates['in memory']:.2f}")
            finally:
                if ceiling is not None:
                    ceiling.terminate()
                    ceiling.wait(timeout=10)
            _, status = request(base, "GET", "/api/control/status")
            running = [task["task"] for task in status["tasks"] if task["state"] == "running"]
            print(f"tasks still running at the end: {', '.join(running) or 'none'}")
            print(f"server peak resident memory: {peak_rss_mb(server.pid):.1f} MB")
        finally:
            server.terminate()
            server.wait(timeout=15)


if __name__ == "__main__":
    main()
