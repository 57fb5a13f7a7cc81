#!/usr/bin/env python3
"""Load POST /api/sqal/samples, the device ingest route, with wrk.

Starts the given filiere binary on a loopback port with a fresh SQLite
file, or on the empty PostgreSQL database given with --database-url, and
runs a gavage (no monitor, no station) until its lots are ready
for slaughter. Then wrk posts valid AS7341 and VL53L8CH samples for --duration
seconds, each with a new (code_lot, sample_index). The server validates,
analyses, grades and stores every one, with a product when it is
compliant. It prints samples/s, latency percentiles, errors, the rows
stored and the server's peak resident memory. Loopback only.
"""

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import urllib.error

from trace_load import peak_rss_mb, request, run_wrk, start_server, wait_for

LOTS = 50
MAX_SAMPLE_INDEX = 999


def device_sample():
    """Returns a smooth, fresh liver seen from 100 mm, as the HTTP tests send it."""
    distances = []
    for zone in range(64):
        row, col = zone // 8 - 3.5, zone % 8 - 3.5
        inside = 1 - (col / 2.6) ** 2 - (row / 2.2) ** 2
        distances.append(100 - 60 * inside ** 0.5 if inside > 0 else 100.0)
    return {
        "device_id": "ESP32_LL_01",
        "code_lot": "@LOT@",
        "sample_index": 0,
        "tof_distances": distances,
        "tof_reflectance": [42.0 if d < 95 else 6.0 for d in distances],
        "tof_amplitude": [5000.0] * 64,
        "tof_ambient": [3.5] * 64,
        "tof_status": [5] * 64,
        "as7341_counts": [1600, 2400, 2000, 7600, 3600, 2400, 4600, 3000, 26000, 2400],
        "as7341_gain": 4,
        "as7341_integration_ms": 100,
    }


def query(database_url, sql):
    """Runs a query on the server's database and returns its rows."""
    if database_url.startswith("sqlite://"):
        with sqlite3.connect(database_url.removeprefix("sqlite://")) as connection:
            return connection.execute(sql).fetchall()
    output = subprocess.run(["psql", database_url, "-Atc", sql], capture_output=True, text=True,
                            timeout=30, check=True).stdout
    return [tuple(line.split("|")) for line in output.splitlines() if line]


def process_cpu_seconds(pid):
    """Returns the user and system CPU seconds a process has used, or 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(server_pid):
    """Returns CPU seconds used so far by the server, by PostgreSQL's
    processes, and by the whole machine split into busy and idle."""
    postgres = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as comm:
                    if comm.read().strip() == "postgres":
                        postgres += process_cpu_seconds(entry)
            except OSError:
                pass
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:]]
    idle = (ticks[3] + ticks[4]) / os.sysconf("SC_CLK_TCK")
    busy = sum(ticks[:8]) / os.sysconf("SC_CLK_TCK") - idle
    return {"server": process_cpu_seconds(server_pid), "postgres": postgres, "busy": busy, "idle": idle}


def cpu_shares(before, after, samples):
    """Describes where the machine's CPU went between two snapshots, with
    the CPU milliseconds per stored sample for the server and PostgreSQL."""
    used = {key: after[key] - before[key] for key in before}
    total = used["busy"] + used["idle"]
    other = used["busy"] - used["server"] - used["postgres"]
    parts = [f"{name} {used[name] / total:.0%}" for name in ("server", "postgres")]
    parts += [f"other (wrk, system) {other / total:.0%}", f"idle {used['idle'] / total:.0%}"]
    per_sample = ", ".join(f"{name} {used[name] * 1000 / max(samples, 1):.3f} ms"
                           for name in ("server", "postgres"))
    return f"CPU during the load: {', '.join(parts)}; per sample: {per_sample}"


def lua_script(lots, threads):
    """Returns a wrk script that posts each (lot, index) pair once across threads."""
    body = json.dumps(device_sample()).replace('"sample_index": 0', '"sample_index": @INDEX@')
    before_lot, rest = body.split("@LOT@")
    between, after_index = rest.split("@INDEX@")
    lot_list = ", ".join(f'"{lot}"' for lot in lots)
    return f"""
local lots = {{{lot_list}}}
local threads = {threads}
local next_offset = 0
function setup(thread)
  thread:set("offset", next_offset)
  next_offset = next_offset + 1
end
function init(args)
  sent = 0
end
request = function()
  local k = sent * threads + offset
  sent = sent + 1
  local lot = lots[(k % #lots) + 1]
  local index = math.floor(k / #lots)
  local body = [==[{before_lot}]==] .. lot .. [==[{between}]==] .. index .. [==[{after_index}]==]
  return wrk.format("POST", "/api/sqal/samples", {{["content-type"] = "application/json"}}, body)
end
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default="target/release/filiere")
    parser.add_argument("--port", type=int, default=3961)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--database-url", default=None, help="an empty PostgreSQL database; SQLite when absent")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install wrk")
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} is missing: build it first")

    base = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as scratch:
        database_url = args.database_url or f"sqlite://{scratch}/ingest.db"
        server = start_server(args.binary, args.port, database_url)
        try:
            request(base, "POST", "/api/control/gavage/start", {"nb_lots": LOTS, "acceleration": 10000000})

            def lots_ready():
                rows = query(database_url, "SELECT code_lot FROM lots WHERE status = 'pret_abattage'")
                return [row[0] for row in rows] if len(rows) == LOTS else None

            lots = wait_for(lots_ready, 60, f"{LOTS} lots ready for slaughter")
            script = os.path.join(scratch, "ingest.lua")
            with open(script, "w") as out:
                out.write(lua_script(lots, args.threads))
            before = cpu_snapshot(server.pid)
            figures = run_wrk(base + "/api/sqal/samples", args.connections, args.duration, args.threads,
                              script=script)
            after = cpu_snapshot(server.pid)
            samples = int(query(database_url, "SELECT COUNT(*) FROM sqal_samples")[0][0])
            products = int(query(database_url, "SELECT COUNT(*) FROM products")[0][0])
            if samples > LOTS * (MAX_SAMPLE_INDEX + 1):
                sys.exit("more samples than unique (lot, index) pairs: the script repeated one")
            engine = "PostgreSQL" if args.database_url else "SQLite"
            print(f"device ingest, {engine}, c={args.connections}: {figures['requests_per_s']:.0f} samples/s  "
                  f"p50 {figures['p50_ms']:.2f} ms  p90 {figures['p90_ms']:.2f} ms  "
                  f"p99 {figures['p99_ms']:.2f} ms  errors {figures['errors']}")
            print(f"stored: {samples} samples, {products} products")
            print(cpu_shares(before, after, samples))
            if figures["errors"]:
                # Show why: one more sample, past the indexes wrk used.
                probe = dict(device_sample(), code_lot=lots[0], sample_index=MAX_SAMPLE_INDEX)
                try:
                    print("probe:", request(base, "POST", "/api/sqal/samples", probe))
                except urllib.error.HTTPError as error:
                    print(f"probe: {error.code} {error.read().decode()}")
            print(f"server peak resident memory: {peak_rss_mb(server.pid):.1f} MB")
        finally:
            server.terminate()
            server.wait(timeout=15)


if __name__ == "__main__":
    main()
