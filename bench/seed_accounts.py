"""Creates N accounts acct-0 … acct-(N-1) on a running purser (keep-alive HTTP)."""
import http.client, json, os, sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8787"))
key = os.environ.get("KEY", "sk_bench")
conn = http.client.HTTPConnection(host, port)
for i in range(n):
    body = json.dumps({"id": f"acct-{i}", "tier": os.environ.get("TIER", "business")})
    conn.request("POST", "/v1/accounts", body, {"Authorization": f"Bearer {key}"})
    r = conn.getresponse(); r.read()
    if r.status not in (201, 409):
        sys.exit(f"account {i}: HTTP {r.status}")
print(f"{n} accounts ready")
