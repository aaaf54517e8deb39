// One Stripe call through the gateway with the official Node SDK (stripe-node),
// configured the only way it can be: host, port and protocol. Prints one JSON
// line: what the SDK returned, or the error it raised.
//   node call.mjs '{"host": "127.0.0.1", "port": 10000, "vaultKey": "vk_...",
//                   "call": "charges.create", "args": [{...}], "idempotencyKey": "..."}'
import Stripe from 'stripe';

const c = JSON.parse(process.argv[2]);
const stripe = new Stripe(c.vaultKey, {
  host: c.host,
  port: c.port,
  protocol: 'http',
  maxNetworkRetries: c.retries ?? 0,
});
const [resource, method] = c.call.split('.');
const args = [...(c.args ?? [])];
if (c.idempotencyKey) args.push({ idempotencyKey: c.idempotencyKey });
try {
  const result = await stripe[resource][method](...args);
  const headers = result.lastResponse?.headers ?? {};
  console.log(JSON.stringify({
    ok: true,
    id: result.id,
    object: result.object,
    amount: result.amount ?? null,
    replayed: headers['idempotent-replayed'] ?? null,
    callId: headers['keybrake-call-id'] ?? null,
  }));
} catch (e) {
  console.log(JSON.stringify({
    ok: false,
    status: e.statusCode ?? null,
    sdkType: e.type ?? null,
    type: e.raw?.type ?? null,
    code: e.code ?? null,
    message: e.message,
  }));
}
