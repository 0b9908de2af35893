// A webhook receiver for purser's tests: every delivery is verified with the
// `standardwebhooks` package (the reference implementation of the Standard
// Webhooks specification, not purser's code) against each secret it was
// told, and recorded. Answers as it is told (200 by default).
//
//   node e2e/webhook-receiver.mjs <port file>
//
// Control (JSON): POST /_secrets {"secrets": ["whsec_…", …]}
//                 POST /_answer {"status": 500}        (0: close the socket)
//                 GET  /_log   → [{"id", "timestamp", "verified": {secret: bool},
//                                  "answered", "body", "at"}]
// Anything else is a delivery.
import http from "node:http";
import fs from "node:fs";
import { Webhook } from "standardwebhooks";

const portFile = process.argv[2];
let secrets = [];
let answer = 200;
const log = [];

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

const server = http.createServer(async (req, res) => {
  const body = await readBody(req);
  const reply = (status, value) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(value));
  };
  if (req.url === "/_secrets" && req.method === "POST") {
    secrets = JSON.parse(body).secrets;
    return reply(200, { secrets: secrets.length });
  }
  if (req.url === "/_answer" && req.method === "POST") {
    answer = JSON.parse(body).status;
    return reply(200, { answer });
  }
  if (req.url === "/_log" && req.method === "GET") {
    return reply(200, log);
  }
  const verified = {};
  for (const secret of secrets) {
    try {
      new Webhook(secret).verify(body, req.headers);
      verified[secret] = true;
    } catch (error) {
      verified[secret] = false;
    }
  }
  let parsed = null;
  try {
    parsed = JSON.parse(body);
  } catch (error) {}
  log.push({
    id: req.headers["webhook-id"] ?? null,
    timestamp: req.headers["webhook-timestamp"] ?? null,
    signatures: (req.headers["webhook-signature"] ?? "").split(" ").filter(Boolean).length,
    verified,
    answered: answer,
    body: parsed,
    at: Date.now(),
  });
  if (answer === 0) {
    req.socket.destroy();
    return;
  }
  reply(answer, { received: true });
});

server.listen(0, "127.0.0.1", () => {
  fs.writeFileSync(portFile, String(server.address().port));
});
process.on("SIGTERM", () => process.exit(0));
