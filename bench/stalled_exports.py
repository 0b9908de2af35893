#!/usr/bin/env python3
"""Stalled CSV exports must not take reads down (issue 14, item 4).

    bench/stalled_exports.py BINARY [EXPORTS] [CHARGES]

Starts BINARY on a fresh data directory, gives one account CHARGES
(20,000) debits (its CSV is megabytes, far past the socket buffers), opens
EXPORTS (500) portal CSV downloads over EXPORTS / 2 portal sessions that
never read a byte, and while they hang measures `/readyz`, a page of the
account's transactions, a charge on another account and the server's RSS
and threads; then again once the exports' write timeout (30 s) has passed.
"""
import http.client, json, os, socket, statistics, subprocess, sys, tempfile, time

BIN = sys.argv[1]
EXPORTS = int(sys.argv[2]) if len(sys.argv) > 2 else 500
CHARGES = int(sys.argv[3]) if len(sys.argv) > 3 else 20_000
KEY = "sk_stalled_exports_0123456789ab"
PORT = int(os.environ.get("PORT", "18797"))
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def call(conn, method, path, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=HEADERS)
    response = conn.getresponse()
    return response.status, response.read()


def status_of(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def timed(conn, method, path, body=None, expect=200, times=50):
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        status, data = call(conn, method, path, body)
        samples.append((time.perf_counter() - started) * 1000)
        assert status == expect, (path, status, data[:200])
    samples.sort()
    return f"median {statistics.median(samples):.2f} ms, max {samples[-1]:.2f} ms"


def measure(server):
    # A fresh connection: an idle one is closed by the server's timeout.
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    rss = status_of(server.pid, "VmRSS") // 1024
    threads = status_of(server.pid, "Threads")
    print(f"  RSS {rss} MB, {threads} threads")
    print(f"  GET /readyz:                       {timed(conn, 'GET', '/readyz')}")
    print(f"  GET /v1/accounts/big/transactions: {timed(conn, 'GET', '/v1/accounts/big/transactions?limit=10', times=40)}")
    print(f"  POST /v1/accounts/other/usage:     "
          f"{timed(conn, 'POST', '/v1/accounts/other/usage', {'credits': '0.01'}, expect=201)}")


def main():
    data = tempfile.mkdtemp()
    env = dict(os.environ, PURSER_ADMIN_KEY=KEY, PURSER_LOG="warn")
    server = subprocess.Popen([BIN, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{PORT}"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                if call(http.client.HTTPConnection("127.0.0.1", PORT, timeout=5), "GET", "/readyz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        for account in ["big", "other"]:
            status, body = call(conn, "POST", "/v1/accounts", {"id": account, "tier": "business"})
            assert status == 201, body
        call(conn, "POST", "/v1/accounts/big/grants", {"credits": "100000", "kind": "promo"})
        made = 0
        while made < CHARGES:
            items = [{"account": "big", "idempotency_key": f"c{made + i}", "credits": "0.01"}
                     for i in range(min(1000, CHARGES - made))]
            status, body = call(conn, "POST", "/v1/usage/batch", {"items": items})
            assert status == 200, body[:300]
            made += len(items)
        print(f"{made} debits on the account")
        print("before the exports:")
        measure(server)

        tokens = []
        for _ in range((EXPORTS + 1) // 2):
            status, body = call(conn, "POST", "/v1/accounts/big/portal_sessions", {})
            assert status == 201, body
            tokens.append(json.loads(body)["url"].rsplit("/portal/", 1)[1])
        stalled, refused, started = [], 0, time.time()
        for i in range(EXPORTS):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", PORT))
            s.sendall(f"GET /portal/{tokens[i // 2]}/transactions.csv HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\n\r\n".encode())
            stalled.append(s)
        time.sleep(2)
        for s in stalled:
            s.setblocking(False)
            try:
                head = s.recv(12, socket.MSG_PEEK)
                if head.startswith(b"HTTP/1.1 429"):
                    refused += 1
            except (BlockingIOError, OSError):
                pass
        print(f"{EXPORTS} exports opened and never read: {refused} refused with 429 "
              f"(the export limits), the rest hang")
        print("while they hang:")
        measure(server)
        wait = 35 - (time.time() - started)
        if wait > 0:
            time.sleep(wait)
        print("after the exports' write timeout (30 s):")
        measure(server)
        for s in stalled:
            s.close()
    finally:
        server.terminate()
        server.wait()


main()
