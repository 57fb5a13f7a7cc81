#!/usr/bin/env python3
"""Measure how the trace page holds up as the database grows.

Runs a real pipeline on a fresh SQLite file, measures one product's trace
page with wrk, then fills the database with copies of the real rows up to
--products products and --samples samples (lots, meals, queue rows,
samples, products and chain events, each copy with its own keys), and
measures the same page again. Loopback only; wrk runs for --duration
seconds per measurement, and the fill is bounded by the requested counts.
"""

import argparse
import os
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import json

from trace_load import run_wrk


def wait_healthy(base, limit=60):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"server at {base} not healthy after {limit} s")


def measure(binary, env, base, path, duration):
    """Starts the server, loads `path` with wrk and returns its figures."""
    server = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(base)
        urllib.request.urlopen(base + path, timeout=10).read()
        figures = run_wrk(base + path, 64, duration, 2)
    finally:
        server.terminate()
        server.wait(timeout=15)
    return figures["requests_per_s"], figures["p50_ms"], figures["p99_ms"], figures["errors"]


def fill(path, products, samples):
    """Copies the rows of the first real lot until the counts are reached."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = OFF")
    lot = db.execute("SELECT * FROM lots ORDER BY code_lot LIMIT 1").fetchone()
    lot_columns = [c[1] for c in db.execute("PRAGMA table_info(lots)")]
    code = lot[lot_columns.index("code_lot")]
    def rows(table, where="code_lot = ?"):
        columns = [c[1] for c in db.execute(f"PRAGMA table_info({table})")]
        return columns, db.execute(f"SELECT * FROM {table} WHERE {where}", (code,)).fetchall()
    meal_cols, meals = rows("meals")
    queue_cols, queue = rows("sqal_pending_lots")
    sample_cols, sample_rows = rows("sqal_samples")
    product_cols, product_rows = rows("products")
    event_cols, event_rows = rows("trace_events")
    sample = sample_rows[0]
    product = product_rows[0]
    per_lot_samples = 100
    per_lot_products = max(1, round(products * per_lot_samples / samples))
    lots = samples // per_lot_samples
    next_sample = db.execute("SELECT MAX(id) FROM sqal_samples").fetchone()[0] + 1
    next_product = db.execute("SELECT MAX(id) FROM products").fetchone()[0] + 1

    def insert(table, columns, values):
        keep = [i for i, c in enumerate(columns) if c != "id" or table in ("sqal_samples", "products")]
        names = ", ".join(columns[i] for i in keep)
        marks = ", ".join("?" for _ in keep)
        db.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})",
                       [[row[i] for i in keep] for row in values])

    started = time.monotonic()
    for number in range(lots):
        new_code = f"MT{1 + number // 999:04d}{1 + number % 999:03d}"
        swap = lambda row, columns: [new_code if c == "code_lot" else v for c, v in zip(columns, row)]
        insert("lots", lot_columns, [swap(lot, lot_columns)])
        insert("meals", meal_cols, [swap(m, meal_cols) for m in meals])
        insert("sqal_pending_lots", queue_cols, [swap(q, queue_cols) for q in queue])
        new_samples, new_products, new_events = [], [], []
        for index in range(per_lot_samples):
            row = swap(sample, sample_cols)
            row[sample_cols.index("id")] = next_sample + index
            row[sample_cols.index("sample_index")] = index
            new_samples.append(row)
        for index in range(per_lot_products):
            row = swap(product, product_cols)
            row[product_cols.index("id")] = next_product + index
            row[product_cols.index("sample_id")] = next_sample + index
            row[product_cols.index("token")] = secrets.token_urlsafe(16)
            row[product_cols.index("product_id")] = f"FG_MT_20990101_{next_product + index:010d}"
            new_products.append(row)
        for seq, event in enumerate(event_rows[:3] + event_rows[3:5] * per_lot_products, start=1):
            row = swap(event, event_cols)
            row[event_cols.index("seq")] = seq
            new_events.append(row)
        insert("sqal_samples", sample_cols, new_samples)
        insert("products", product_cols, new_products)
        insert("trace_events", event_cols, new_events)
        next_sample += per_lot_samples
        next_product += per_lot_products
        if number % 1000 == 999:
            db.commit()
            print(f"  {number + 1} lots copied in {time.monotonic() - started:.0f} s", flush=True)
    db.commit()
    counts = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
              for t in ("lots", "meals", "sqal_samples", "products", "trace_events")}
    db.close()
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default="target/release/filiere")
    parser.add_argument("--port", type=int, default=3954)
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--duration", type=int, default=15)
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory(dir=os.environ.get("GROWTH_DIR")) as scratch:
        db_path = f"{scratch}/growth.db"
        # The page cache would serve both measurements from memory: this
        # measures the rendering path, which reads the database.
        env = dict(os.environ, DATABASE_URL=f"sqlite://{db_path}",
                   FILIERE_BIND=f"127.0.0.1:{args.port}", RUST_LOG="warn",
                   FILIERE_PAGE_CACHE_SECONDS="0")
        server = subprocess.Popen([args.binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_healthy(base)
            request = urllib.request.Request(
                base + "/api/control/pipeline/start", method="POST",
                data=b'{"gavage":{"nb_lots":3,"acceleration":10000000},"sqal":{"interval":0.01,"nb_samples":20}}',
                headers={"content-type": "application/json"})
            urllib.request.urlopen(request, timeout=10).read()
            time.sleep(5)
            latest = json.load(urllib.request.urlopen(base + "/api/consumer/latest-product", timeout=5))
            token = latest["product"]["token"]
        finally:
            server.terminate()
            server.wait(timeout=15)
        path = f"/trace/{token}"
        small = measure(args.binary, env, base, path, args.duration)
        print(f"almost empty: {small[0]:.0f} req/s, p50 {small[1]:.2f} ms, p99 {small[2]:.2f} ms, errors {small[3]}")
        counts = fill(db_path, args.products, args.samples)
        size = os.path.getsize(db_path) / 1e9
        print(f"filled: {counts}, {size:.2f} GB")
        grown = measure(args.binary, env, base, path, args.duration)
        print(f"grown:        {grown[0]:.0f} req/s, p50 {grown[1]:.2f} ms, p99 {grown[2]:.2f} ms, errors {grown[3]}")
        print(f"ratio grown/empty: p50 {grown[1] / small[1]:.2f}, p99 {grown[2] / small[2]:.2f}")


if __name__ == "__main__":
    main()
