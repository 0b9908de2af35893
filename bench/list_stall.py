#!/usr/bin/env python3
"""Readers of one account's long purchase list must not stall charges on
other accounts (issue 14, item 2).

    bench/list_stall.py BINARY [PURCHASES] [READERS]

Starts BINARY on a fresh data directory, gives one account PURCHASES (40,000)
canceled purchases over the API, then runs `purser bench` (uniform charges
over 10,000 other accounts, 64 connections, 10 s) twice: alone, and with
READERS (4) threads reading the long account's purchase list (the default
page) in a loop. Prints both throughputs and p99s, and the readers' rate.
"""
import http.client, json, os, subprocess, sys, tempfile, threading, time

BIN = sys.argv[1]
PURCHASES = int(sys.argv[2]) if len(sys.argv) > 2 else 40_000
READERS = int(sys.argv[3]) if len(sys.argv) > 3 else 4
KEY = "sk_list_stall_0123456789abcdef"
PORT = int(os.environ.get("PORT", "18799"))
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def call(conn, method, path, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=HEADERS)
    response = conn.getresponse()
    data = response.read()
    return response.status, data


def main():
    data = tempfile.mkdtemp()
    env = dict(os.environ, PURSER_ADMIN_KEY=KEY, PURSER_LOG="warn")
    server = subprocess.Popen([BIN, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{PORT}"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
                if call(c, "GET", "/readyz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        status, body = call(conn, "POST", "/v1/accounts", {"id": "long", "tier": "business"})
        assert status == 201, body
        started = time.time()
        # In parallel connections: creating and canceling is two calls each.
        def make(count):
            c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
            for _ in range(count):
                status, body = call(c, "POST", "/v1/accounts/long/purchases", {"package": "small"})
                assert status == 201, body
                purchase = json.loads(body)["id"]
                status, body = call(c, "POST", f"/v1/purchases/{purchase}/cancel", {})
                assert status == 200, body
        workers = [threading.Thread(target=make, args=(PURCHASES // 8,)) for _ in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        print(f"{PURCHASES} canceled purchases made in {time.time() - started:.1f} s")
        bench = [BIN, "bench", "--url", f"http://127.0.0.1:{PORT}", "--api-key", KEY, "--json"]
        subprocess.run(bench + ["--scenario", "uniform", "--setup", "--accounts", "10000",
                                "--duration", "1", "--warmup", "0"], check=True, stdout=subprocess.DEVNULL)

        def charges():
            out = subprocess.run(bench + ["--scenario", "uniform", "--accounts", "10000", "--concurrency", "64",
                                          "--duration", "10", "--warmup", "2"], check=True,
                                 capture_output=True, text=True).stdout
            result = json.loads(out)
            return result["charges_per_second"], result["latency_ms"]["p99"]

        alone = charges()
        stop = threading.Event()
        reads = [0] * READERS

        def reader(index):
            c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
            while not stop.is_set():
                status, _ = call(c, "GET", "/v1/accounts/long/purchases")
                assert status == 200
                reads[index] += 1

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(READERS)]
        for t in threads:
            t.start()
        time.sleep(1)
        before = sum(reads)
        read_started = time.time()
        loaded = charges()
        read_rate = (sum(reads) - before) / (time.time() - read_started)
        stop.set()
        for t in threads:
            t.join()
        print(f"charges alone:                 {alone[0]:,.0f}/s, p99 {alone[1]} ms")
        print(f"with {READERS} readers of the list: {loaded[0]:,.0f}/s, p99 {loaded[1]} ms "
              f"({loaded[0] / alone[0]:.0%} of alone; list reads {read_rate:,.0f}/s)")
    finally:
        server.terminate()
        server.wait()


main()
