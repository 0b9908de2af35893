#!/usr/bin/env python3
"""One account buys packages any number of times (issue 14, item 3).

    bench/purchases.py BINARY [PURCHASES]

Starts BINARY on a fresh data directory and has one account buy PURCHASES
(100,000) packages over the API: each one created, completed (payment
confirmed) and spent by a charge of the package's credits, from 8
connections. Prints the rate, the server's memory before and after, the
last purchase's answer time, a charge's time on that account at the end,
and a restart's time to ready.
"""
import http.client, json, os, subprocess, sys, tempfile, threading, time

BIN = os.path.realpath(sys.argv[1])
PURCHASES = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
KEY = "sk_purchases_0123456789abcdef"
PORT = int(os.environ.get("PORT", "18798"))
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def call(conn, method, path, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=HEADERS)
    response = conn.getresponse()
    return response.status, response.read()


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon"):
                return int(line.split()[1]) * 1024
    return 0


def disk(data):
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(data) for name in names
               if os.path.exists(os.path.join(root, name)))


def serve(data):
    env = dict(os.environ, PURSER_ADMIN_KEY=KEY, PURSER_LOG="warn")
    started = time.time()
    server = subprocess.Popen([BIN, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{PORT}"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
            if call(c, "GET", "/readyz")[0] == 200:
                return server, time.time() - started
        except OSError:
            pass
        time.sleep(0.05)
    server.kill()
    sys.exit("the server did not become ready")


def main():
    data = tempfile.mkdtemp()
    server, _ = serve(data)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        status, body = call(conn, "POST", "/v1/accounts", {"id": "buyer", "tier": "starter"})
        assert status == 201, body
        status, body = call(conn, "GET", "/v1/accounts/buyer/balance")
        budget = json.loads(body)["available"]
        status, body = call(conn, "POST", "/v1/accounts/buyer/usage", {"credits": budget})
        assert status == 201, body
        rss0 = rss(server.pid)
        started = time.time()
        errors = []

        def buy(count):
            c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
            try:
                for _ in range(count):
                    status, body = call(c, "POST", "/v1/accounts/buyer/purchases", {"package": "small"})
                    assert status == 201, body
                    purchase = json.loads(body)
                    status, body = call(c, "POST", f"/v1/purchases/{purchase['id']}/complete", {})
                    assert status == 200, body
                    status, body = call(c, "POST", "/v1/accounts/buyer/usage",
                                        {"credits": purchase["credits"]})
                    assert status == 201, body
            except AssertionError as error:
                errors.append(error)

        # The server's memory at each tenth: SQLite's page caches (bounded,
        # 192 MiB in all) fill first, so the growth once they are full is
        # what the ledger itself keeps per purchase.
        samples = []
        done = threading.Event()

        def sample():
            while not done.wait(0.2):
                samples.append((time.time() - started, rss(server.pid), disk(data)))

        workers = [threading.Thread(target=buy, args=(PURCHASES // 8,)) for _ in range(8)]
        sampler = threading.Thread(target=sample)
        sampler.start()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        done.set()
        sampler.join()
        if errors:
            sys.exit(f"a purchase failed: {errors[0]}")
        elapsed = time.time() - started
        rss1 = rss(server.pid)
        # A fresh connection: the first one sat idle past the server's timeout.
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        print(f"{PURCHASES} purchases (create, complete, spend) on one account in {elapsed:.1f} s: "
              f"{PURCHASES / elapsed:.0f} purchases/s")
        print(f"memory: RssAnon {rss0 >> 20} -> {rss1 >> 20} MB "
              f"({(rss1 - rss0) // PURCHASES} bytes a purchase, SQLite's page caches included); "
              f"data directory {disk(data) >> 20} MB")
        for tenth in range(1, 10):
            at = elapsed * tenth / 10
            t, r, d = min(samples, key=lambda s: abs(s[0] - at))
            print(f"  at ~{tenth * 10}%: RssAnon {r >> 20} MB, data directory {d >> 20} MB")
        half = min(samples, key=lambda s: abs(s[0] - elapsed / 2))[1]
        print(f"second half: {(rss1 - half) * 2 // PURCHASES} bytes a purchase")
        t = time.time()
        status, body = call(conn, "POST", "/v1/accounts/buyer/purchases", {"package": "small"})
        assert status == 201, body
        purchase = json.loads(body)["id"]
        status, body = call(conn, "POST", f"/v1/purchases/{purchase}/complete", {})
        assert status == 200, body
        t1 = time.time()
        status, body = call(conn, "POST", "/v1/accounts/buyer/usage", {"credits": "1"})
        assert status == 201, body
        t2 = time.time()
        status, body = call(conn, "GET", "/v1/accounts/buyer/purchases?limit=100")
        assert status == 200, body
        t3 = time.time()
        status, body = call(conn, "GET", "/v1/accounts/buyer/grants?limit=100")
        assert status == 200, body
        t4 = time.time()
        print(f"purchase {PURCHASES + 1}: created and completed in {(t1 - t) * 1000:.1f} ms; "
              f"a charge {(t2 - t1) * 1000:.1f} ms; purchase list page {(t3 - t2) * 1000:.1f} ms; "
              f"grant list page {(t4 - t3) * 1000:.1f} ms")
        server.send_signal(2)
        server.wait()
        server, ready = serve(data)
        print(f"restart to ready: {ready * 1000:.0f} ms")
    finally:
        server.kill()
        server.wait()
        subprocess.run(["rm", "-rf", data])


main()
