#!/usr/bin/env python3
# RSS of a purser server while 2,000 connections each declare a 1 MiB body
# without an API key and send the first megabyte they can (BENCHMARKS.md).
# Usage: python3 bench/unauthenticated_bodies.py target/release/purser
# (raise the open-file limit first: ulimit -n 8192)
import socket, subprocess, time, os, tempfile, sys
binary = sys.argv[1]
d = tempfile.mkdtemp()
env = dict(os.environ, PURSER_ADMIN_KEY="sk_bodies_test_0123456789", PURSER_LOG="warn")
p = subprocess.Popen([binary, "serve", "--data-dir", d, "--listen", "127.0.0.1:18795"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", 18795)).close(); break
    except OSError: time.sleep(0.1)
time.sleep(0.5)
def rss(): return int(open(f"/proc/{p.pid}/status").read().split("VmRSS:")[1].split()[0]) // 1024
before = rss()
conns, answered = [], 0
chunk = b"x" * 65536
for i in range(2000):
    s = socket.create_connection(("127.0.0.1", 18795))
    s.sendall(b"POST /v1/accounts HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n")
    s.setblocking(False)
    try:
        for _ in range(16): s.send(chunk)
    except BlockingIOError: pass
    except OSError: pass
    conns.append(s)
time.sleep(2)
for s in conns:
    try:
        if s.recv(64).startswith(b"HTTP/1.1 401"): answered += 1
    except (BlockingIOError, OSError): pass
print(f"RSS before {before} MB, with 2,000 unauthenticated 1 MiB bodies {rss()} MB; 401 answers seen: {answered}")
for s in conns: s.close()
p.terminate(); p.wait()
