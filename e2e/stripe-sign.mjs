// Signs a Stripe webhook payload the way Stripe does, with Stripe's own
// library (`stripe` from npm, not purser's code), for purser's tests:
//
//   node e2e/stripe-sign.mjs <secret> [timestamp] < payload   → Stripe-Signature header
import Stripe from "stripe";

const [secret, timestamp] = process.argv.slice(2);
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const payload = Buffer.concat(chunks).toString("utf8");
const stripe = new Stripe("sk_test_unused");
const header = stripe.webhooks.generateTestHeaderString({
  payload,
  secret,
  ...(timestamp ? { timestamp: Number(timestamp) } : {}),
});
process.stdout.write(header);
