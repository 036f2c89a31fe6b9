// bench/node/gateway.js: the Node.js contender, written the way the popular
// "build an API gateway with Express" tutorials write it: express for
// routing, http-proxy-middleware for the proxy (with a keep-alive agent, which
// the better tutorials add), jsonwebtoken for JWT, express-rate-limit for
// limits. One process (no cluster), as every contender runs one worker.
//
// Environment (set by bench/run): PORT, UPSTREAM, UPSTREAM2, SCENARIO,
// ROUTES (S9 table size), DATA (bench data dir: keys, tokens), REDIS_PORT,
// KEYOBJECT=1 (the node-ko contender: JWT keys pre-parsed as KeyObjects).
'use strict';

const http = require('http');
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const express = require('express');
const { createProxyMiddleware } = require('http-proxy-middleware');
const jwt = require('jsonwebtoken');
const { rateLimit } = require('express-rate-limit');

const PORT = Number(process.env.PORT);
const UPSTREAM = process.env.UPSTREAM;
const SCENARIO = process.env.SCENARIO || 'S1';
const ROUTES = Number(process.env.ROUTES || 10000);

const DATA = process.env.DATA;
const KEYOBJECT = process.env.KEYOBJECT === '1';
const HS256_SECRET = 'bench-hs256-secret-0123456789abcdef0123456789abcdef';

const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
const proxyTo = (target, extra) => createProxyMiddleware({ target, agent, xfwd: true, ...extra });

const app = express();
app.get('/health', (req, res) => res.json({ status: 'ok' }));

// --- the middlewares the tutorials write -------------------------------
function keyAuth() {
  const keys = new Map();
  for (const line of fs.readFileSync(path.join(DATA, 'keys.txt'), 'utf8').split('\n')) {
    const [key, id] = line.split(' ');
    if (key) keys.set(key, { id, plan: 'free' });
  }
  return (req, res, next) => {
    const key = req.headers['x-api-key'];
    if (!key) return res.status(401).json({ error: 'API key required' });
    const consumer = keys.get(key);
    if (!consumer) return res.status(401).json({ error: 'Invalid API key' });
    delete req.headers['x-api-key'];
    req.headers['x-client-id'] = consumer.id;
    req.headers['x-client-plan'] = consumer.plan;
    req.consumer = consumer;
    next();
  };
}

// KEYOBJECT=1: the key parsed once into a KeyObject (what jsonwebtoken
// otherwise does on every verify), the faster variant some guides show.
function jwtAuth(alg) {
  let key = alg === 'HS256' ? HS256_SECRET
    : fs.readFileSync(path.join(DATA, alg === 'RS256' ? 'rsa.pub.pem' : 'ec.pub.pem'), 'utf8');
  if (KEYOBJECT) key = alg === 'HS256' ? crypto.createSecretKey(Buffer.from(key)) : crypto.createPublicKey(key);
  return (req, res, next) => {
    const auth = req.headers.authorization;
    if (!auth || !auth.startsWith('Bearer ')) return res.status(401).json({ error: 'Missing token' });
    try {
      const claims = jwt.verify(auth.slice(7), key, { algorithms: [alg] });
      delete req.headers.authorization;
      req.headers['x-user-id'] = claims.sub;
      req.user = claims;
      next();
    } catch (e) {
      res.status(401).json({ error: 'Invalid or expired token' });
    }
  };
}

function redisStore() {
  const { RedisStore } = require('rate-limit-redis');
  const Redis = require('ioredis');
  const client = new Redis({ host: '127.0.0.1', port: Number(process.env.REDIS_PORT) });
  return new RedisStore({ sendCommand: (command, ...args) => client.call(command, ...args) });
}

// A stable hash of the user (FNV-1a), weight percent to the canary.
function canaryRouter(weight, userOf) {
  return (req) => {
    const user = userOf(req);
    if (!user) return UPSTREAM;
    let h = 0x811c9dc5;
    for (let i = 0; i < user.length; i++) h = Math.imul(h ^ user.charCodeAt(i), 0x01000193) >>> 0;
    return h % 100 < weight ? process.env.UPSTREAM2 : UPSTREAM;
  };
}

const api = proxyTo(UPSTREAM);
switch (SCENARIO) {
  case 'S3':
    app.use('/api/v1', keyAuth(), (req, res, next) => {
      req.headers['x-bench'] = 's3';
      delete req.headers['x-debug'];
      next();
    }, api);
    break;
  case 'S4-hs256': case 'S4-hs256-10k':
    app.use('/api/v1', jwtAuth('HS256'), api);
    break;
  case 'S4-rs256':
    app.use('/api/v1', jwtAuth('RS256'), api);
    break;
  case 'S4-es256':
    app.use('/api/v1', jwtAuth('ES256'), api);
    break;
  case 'S5-local':
    app.use('/api/v1', rateLimit({ windowMs: 60000, limit: 1000000000 }), api);
    break;
  case 'S5-redis':
    app.use('/api/v1', rateLimit({ windowMs: 60000, limit: 1000000000, store: redisStore() }), api);
    break;
  case 'S5-reject':
    app.use('/api/v1', rateLimit({ windowMs: 1000, limit: 2000, keyGenerator: () => 'route' }), api);
    break;
  case 'S6':
    app.use('/api/v1', proxyTo(UPSTREAM, { router: canaryRouter(10, (req) => req.headers['x-user']) }));
    break;
  case 'S8':
    app.use('/api/v1', keyAuth(), jwtAuth('RS256'),
      rateLimit({ windowMs: 60000, limit: 1000000000, store: redisStore(), keyGenerator: (req) => req.consumer.id }),
      (req, res, next) => {
        req.headers['x-bench'] = 's8';
        delete req.headers['x-debug'];
        res.setHeader('X-Served-By', 'gateway');
        next();
      },
      proxyTo(UPSTREAM, { router: canaryRouter(10, (req) => req.consumer.id) }));
    break;
  case 'S9':
    // Express matches mounted middleware in order, one by one.
    for (let i = 0; i < ROUTES; i++) {
      app.use('/svc/r' + String(i).padStart(4, '0'), api);
    }
    app.use('/api/v1', api);
    break;
  default:
    // Express strips the mount path: the upstream sees /users/42.
    app.use('/api/v1', api);
}

const server = app.listen(PORT, '127.0.0.1', () => {
  process.stdout.write('listening ' + PORT + '\n');
});
// Node closes idle client connections after 5 s by default; the other
// contenders keep them 60 s or more, and S7 holds 10,000 idle connections.
server.keepAliveTimeout = 120000;
server.headersTimeout = 121000;
server.maxRequestsPerSocket = 0;
process.on('SIGTERM', () => process.exit(0));
