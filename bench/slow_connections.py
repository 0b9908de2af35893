#!/usr/bin/env python3
"""Slow and idle connections are closed at their timeouts (issue 14, item 6).

    bench/slow_connections.py BINARY [SLOW] [IDLE]

Starts BINARY with its default limits on a fresh data directory, then opens
SLOW (2,000) slowloris connections, each sending a request's headers a line
every 5 seconds and never ending them, and IDLE (5,000) keep-alive
connections, each making one request and then sitting idle. Connections
beyond `limits.max_connections` (4,096) wait in the listen backlog. Every
second it notes which connections the server closed, the server's RSS and
threads, and how long `GET /readyz` takes on a fresh connection. Prints
when each kind was closed (against the 30 s header timeout, which is also
the idle limit) and the worst `/readyz` time while they were held.
"""
import os, resource, selectors, socket, statistics, subprocess, sys, tempfile, time

BIN = os.path.realpath(sys.argv[1])
SLOW = int(sys.argv[2]) if len(sys.argv) > 2 else 2_000
IDLE = int(sys.argv[3]) if len(sys.argv) > 3 else 5_000
PORT = int(os.environ.get("PORT", "18797"))
ADDRESS = ("127.0.0.1", PORT)

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65_536), hard))


def status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def readyz():
    """Milliseconds for GET /readyz on a fresh connection (None: no answer in 10 s)."""
    started = time.time()
    try:
        with socket.create_connection(ADDRESS, timeout=10) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            answer = s.recv(64)
            if not answer.startswith(b"HTTP/1.1 200"):
                return None
    except OSError:
        return None
    return (time.time() - started) * 1000


def main():
    data = tempfile.mkdtemp()
    env = dict(os.environ, PURSER_ADMIN_KEY="sk_slow_connections_0123456789", PURSER_LOG="warn")
    server = subprocess.Popen([BIN, "serve", "--data-dir", data, "--listen", f"{ADDRESS[0]}:{PORT}"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if readyz() is not None:
                break
            time.sleep(0.05)
        else:
            sys.exit("the server did not become ready")
        rss0 = status(server.pid, "VmRSS") >> 10
        selector = selectors.DefaultSelector()
        opened = {}  # socket -> (kind, opened at)
        closed = {"slow": [], "idle": []}
        started = time.time()
        for kind, count in (("slow", SLOW), ("idle", IDLE)):
            for _ in range(count):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(ADDRESS)
                opened[s] = (kind, time.time())
                selector.register(s, selectors.EVENT_WRITE, "connecting")
        sent_lines = 0
        readyz_times, peak_rss, peak_threads = [], rss0, 0
        next_trickle = time.time()
        next_probe = time.time()
        while opened and time.time() - started < 150:
            for key, _ in selector.select(timeout=0.2):
                s = key.fileobj
                kind, at = opened[s]
                if key.data == "connecting":
                    request = b"GET /readyz HTTP/1.1\r\nHost: bench\r\n"
                    if kind == "idle":
                        request += b"\r\n"
                    try:
                        s.send(request)
                    except OSError:
                        pass
                    selector.modify(s, selectors.EVENT_READ, "open")
                    continue
                try:
                    chunk = s.recv(65_536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    closed[kind].append(time.time() - started)
                    selector.unregister(s)
                    s.close()
                    del opened[s]
            now = time.time()
            if now >= next_trickle:
                # The slowloris: one more header line each, never the last.
                sent_lines += 1
                for s, (kind, _) in opened.items():
                    if kind == "slow":
                        try:
                            s.send(b"X-Slow-%d: 1\r\n" % sent_lines)
                        except OSError:
                            pass
                next_trickle = now + 5
            if now >= next_probe:
                latency = readyz()
                readyz_times.append(latency)
                peak_rss = max(peak_rss, status(server.pid, "VmRSS") >> 10)
                peak_threads = max(peak_threads, status(server.pid, "Threads"))
                next_probe = now + 1
        print(f"{SLOW} slowloris and {IDLE} idle keep-alive connections, default limits "
              f"(30 s header and idle timeout, 4,096 connections)")
        for kind, times in closed.items():
            total = SLOW if kind == "slow" else IDLE
            if times:
                print(f"  {kind}: {len(times)} of {total} closed by the server, from {min(times):.1f} s "
                      f"to {max(times):.1f} s after opening (median {statistics.median(times):.1f} s)")
            else:
                print(f"  {kind}: none of {total} closed by the server")
        if opened:
            print(f"  still open after {time.time() - started:.0f} s: {len(opened)}")
        answered = [t for t in readyz_times if t is not None]
        print(f"  GET /readyz on a fresh connection while they were held: {len(answered)} of "
              f"{len(readyz_times)} answered, median {statistics.median(answered):.1f} ms, "
              f"max {max(answered):.1f} ms" if answered else "  GET /readyz never answered")
        print(f"  server RSS {rss0} MB before, {peak_rss} MB at most; {peak_threads} threads at most")
        for s in list(opened):
            s.close()
    finally:
        server.kill()
        server.wait()
        subprocess.run(["rm", "-rf", data])


main()
