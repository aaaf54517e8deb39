// The seeds' retry failure mode, from Node: a billing task charges a customer,
// then fails writing the result to its database; the scheduler (a Ray task's
// max_retries, a Kestra retry, a queue's redelivery) runs the whole task again
// from its first line. stripe-node puts a new random Idempotency-Key on every
// POST, so each run looks like a new charge to Stripe. Through Keybrake, with
// the key's default content dedup, the customer is charged once.
//
//   KEYBRAKE_URL=http://127.0.0.1:10000 KEYBRAKE_ADMIN_KEY=... node examples/node/task_retry.mjs [customer]
//
// stripe-node takes only a host, a port and a protocol (its base path is
// fixed to /v1/): Keybrake serves Stripe's paths at the root of its listener.
import Stripe from 'stripe';

const gateway = new URL(process.env.KEYBRAKE_URL ?? 'http://127.0.0.1:10000');
const adminKey = process.env.KEYBRAKE_ADMIN_KEY;
if (!adminKey) throw new Error('set KEYBRAKE_ADMIN_KEY (the gateway admin key)');
const customer = process.argv[2] ?? `cus_node_${Date.now()}`;

// The driver issues a short-lived vault key for this task: one endpoint, a cap.
async function issueVaultKey() {
  const res = await fetch(new URL('/admin/vault_keys', gateway), {
    method: 'POST',
    headers: { authorization: `Bearer ${adminKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      label: `node-billing-${customer}`,
      vendor: 'stripe',
      allowed_endpoints: ['POST /v1/charges'],
      daily_usd_cap: 50,
      expires_in_seconds: 3600,
    }),
  });
  if (res.status !== 201) throw new Error(`issuing a vault key: ${res.status} ${await res.text()}`);
  return (await res.json()).vault_key;
}

// Every charge id a run got back, to show they are one charge.
const charged = [];

// The task, as a scheduler runs it: everything from the first line.
async function billingTask(vaultKey, attempt) {
  const stripe = new Stripe(vaultKey, {
    host: gateway.hostname,
    port: Number(gateway.port || 80),
    protocol: gateway.protocol.replace(':', ''),
  });
  const charge = await stripe.charges.create({
    amount: 2999,
    currency: 'usd',
    customer,
    description: 'Subscription 2026-06',
  });
  charged.push(charge.id);
  if (attempt === 1) throw new Error('database write failed after the charge (simulated)');
  return charge.id;
}

const vaultKey = await issueVaultKey();
for (let attempt = 1; attempt <= 3; attempt++) {
  try {
    await billingTask(vaultKey, attempt);
    break;
  } catch (e) {
    console.error(`attempt ${attempt} failed: ${e.message}; retrying the whole task`);
  }
}
// Two runs, two answers, one charge: both ids are the same.
console.log(JSON.stringify({ customer, chargeIds: charged }));
