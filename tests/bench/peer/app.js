// The in-process peer of `make bench` (issue 14): an Express app doing
// idemproxy's job inside the application, with @node-idempotency/core and
// its Redis adapter, on the Redis idemproxy's rows use. Its answer is the
// bench upstream's (201 "created"), so only where the work happens differs.
//
// Per unique key it sends `SET key in-progress NX PX` and, after the
// handler, a plain `SET key response PX`; a repeat sends the same SET NX,
// then `GET`. The completion is not owner-checked (a late completion
// overwrites whatever holds the key by then): that check is what
// idemproxy's completion script pays for.
//
// PORT, REDIS_PORT from the environment; prints "listening" when ready.
"use strict";
const express = require("express");
const { Idempotency } = require("@node-idempotency/core");
const { RedisStorageAdapter } = require("@node-idempotency/storage-adapter-redis");

const storage = new RedisStorageAdapter({ url: `redis://127.0.0.1:${process.env.REDIS_PORT}` });
const idempotency = new Idempotency(storage, {});
const app = express();
app.use(express.json());

app.post("/orders", async (req, res) => {
  const request = { method: req.method, headers: req.headers, body: req.body, path: req.path };
  try {
    const stored = await idempotency.onRequest(request);
    if (stored) {
      res.status(stored.additional.status).send(stored.body);
      return;
    }
  } catch (err) {
    res.status(409).send(String(err.message));
    return;
  }
  const response = { body: "created", additional: { status: 201 } };
  await idempotency.onResponse(request, response);
  res.status(201).send(response.body);
});

storage.connect().then(() => {
  app.listen(Number(process.env.PORT), "127.0.0.1", () => console.log("listening"));
});
