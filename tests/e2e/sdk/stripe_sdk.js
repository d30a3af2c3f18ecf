// stripe_sdk.js - the official Stripe Node SDK driven through idemproxy
// (tests/e2e/test_sdk.py). The SDK sends an Idempotency-Key on every POST
// and retries timeouts, 409 and 5xx on its own, the way applications run it.
//
//   node stripe_sdk.js upstream        a Stripe-shaped API on a free port:
//                                      prints {"port": N}, then serves until
//                                      killed. POST /v1/customers creates a
//                                      customer; the metadata of the request
//                                      steers it: delay_ms (answer late), reset
//                                      (close the connection without an answer).
//                                      GET /__count?key=K: executions of key K.
//   node stripe_sdk.js client PORT     the scenarios against idemproxy on PORT;
//                                      prints one JSON line of results.
'use strict';
const http = require('http');

function upstream() {
  const executions = {};
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      const url = new URL(req.url, 'http://x');
      if (url.pathname === '/__count') {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({ count: executions[url.searchParams.get('key')] || 0 }));
        return;
      }
      const key = req.headers['idempotency-key'] || '';
      executions[key] = (executions[key] || 0) + 1;
      const params = new URLSearchParams(body);
      if (params.get('metadata[reset]')) {
        req.socket.destroy();
        return;
      }
      const n = Object.values(executions).reduce((a, b) => a + b, 0);
      const answer = () => {
        res.writeHead(200, { 'Content-Type': 'application/json', 'Request-Id': `req_${n}` });
        res.end(JSON.stringify({ id: `cus_${n}`, object: 'customer', email: params.get('email') }));
      };
      setTimeout(answer, Number(params.get('metadata[delay_ms]') || 0));
    });
  });
  server.listen(0, '127.0.0.1', () => {
    process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
  });
}

async function outcome(promise) {
  try {
    const c = await promise;
    return { ok: true, id: c.id || null, object: c.object || null };
  } catch (e) {
    return { ok: false, type: e.type || null, status: e.statusCode || null,
             code: (e.raw && e.raw.code) || null };
  }
}

async function client(port) {
  const Stripe = require('stripe');
  const stripe = new Stripe('sk_test_idemproxy', {
    host: '127.0.0.1', port: Number(port), protocol: 'http',
    maxNetworkRetries: 4, timeout: 3000, telemetry: false,
  });
  const create = (key, metadata, options = {}) =>
    stripe.customers.create({ email: `${key}@example.com`, metadata },
                            { idempotencyKey: key, ...options });
  const out = {};
  out.plain = await outcome(create('plain', {}));
  // two attempts at once: the second meets the first in flight (409) and retries
  const [a, b] = await Promise.all([create('race', { delay_ms: '1200' }),
                                    new Promise((r) => setTimeout(r, 200))
                                      .then(() => create('race', { delay_ms: '1200' }))]);
  out.race = [{ id: a.id }, { id: b.id }];
  // the SDK gives up waiting and retries while the first attempt still runs
  out.timeout = await outcome(create('slow', { delay_ms: '2000' }, { timeout: 700 }));
  // the upstream resets after receiving the request: the outcome is unknown,
  // so every retry must be an error, never a customer without an id
  out.reset = await outcome(create('reset', { reset: 'yes' }, { maxNetworkRetries: 2 }));
  // the same key with other parameters
  out.mismatch = await outcome(stripe.customers.create({ email: 'other@example.com' },
                                                       { idempotencyKey: 'plain' }));
  process.stdout.write(JSON.stringify(out) + '\n');
}

if (process.argv[2] === 'upstream') upstream();
else client(process.argv[3]).catch((e) => { console.error(e); process.exit(1); });
