// Test OAuth2 token endpoint: oauth2-mock-server (internal, 127.0.0.1:0) behind a thin node:http
// front layer (the URL tests use) that checks client credentials, records token requests and
// injects faults (status/body/headers, delays, hangs, connection resets).
//
// Usage:
//   node server.js [--client-id ID] [--client-secret SECRET] [--lifetime SECONDS] [--port N]
//                  [--host 127.0.0.1] [--watch-stdin]
// Env fallbacks: IDP_CLIENT_ID, IDP_CLIENT_SECRET, IDP_TOKEN_LIFETIME, IDP_PORT, IDP_HOST.
// Prints one JSON line on stdout when ready: {"url", "token_url", "jwks_url", "issuer", ...}.
// Exits on SIGTERM/SIGINT (and, with --watch-stdin, when stdin closes: no orphan if the parent dies).
//
// Control API (front layer):
//   GET  /_stats    -> {"count", "token_requests": [...], "jwks_requests", "settings"}
//   GET  /_control  -> current settings
//   POST /_control  JSON, every field optional, applied in this order:
//     clear_stats: true           forget recorded requests
//     clear_faults: true          empty the fault queue
//     lifetime: seconds           lifetime of tokens issued from now on (exp = iat + lifetime)
//     expires_in: n|"omit"|null   what to report in expires_in (null: the real lifetime)
//     extra_claims: {...}|null    claims merged into every issued access token
//     client_id / client_secret   change the accepted credentials
//     require_client_auth: bool   (default true) check credentials on /token
//     basic_decoding: "rfc"|"raw"|"either"  how HTTP Basic id/secret are decoded (default "rfc":
//                                 application/x-www-form-urlencoded per RFC 6749 2.3.1)
//     hang: bool                  persistent: hold every token request unanswered until turned
//                                 off (held requests are then answered normally) or client leaves
//     delay_ms: n                 persistent: answer every token request after n ms
//     rotate_key: true            sign with a new RS256 key from now on (JWKS lists old and new)
//     faults: [fault, ...]        appended to the queue for the next token requests; a fault is
//        {status, body (string or JSON value), content_type, headers: {}, retry_after,
//         delay_ms, hang: true, reset: true, pass: true (forward to the real endpoint after
//         delay_ms), count: N (default 1)}
//     reset: true|N               shorthand: destroy the socket of the next 1|N token requests
//     garbage: "text"             shorthand: next token request gets 200 text/html "text"
//   Responses: {"ok": true, "settings": {...}}
'use strict';

const http = require('node:http');
const { URL } = require('node:url');

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) continue;
    const eq = a.indexOf('=');
    if (eq > 0) {
      out[a.slice(2, eq)] = a.slice(eq + 1);
    } else if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) {
      out[a.slice(2)] = argv[++i];
    } else {
      out[a.slice(2)] = true;
    }
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const env = process.env;

const state = {
  clientId: String(args['client-id'] ?? env.IDP_CLIENT_ID ?? 'test-client'),
  clientSecret: String(args['client-secret'] ?? env.IDP_CLIENT_SECRET ?? 'test-secret'),
  lifetime: Number(args.lifetime ?? env.IDP_TOKEN_LIFETIME ?? 3600),
  expiresIn: null, // null: real lifetime; number: reported value; "omit": no expires_in
  extraClaims: null,
  requireClientAuth: true,
  basicDecoding: 'rfc',
  hang: false,
  delayMs: 0,
  signingKid: undefined,
  faults: [], // [{...fault, remaining}]
  tokenRequests: [],
  jwksRequests: 0,
  held: new Set(), // resolve functions of requests held by a persistent hang
};
const host = String(args.host ?? env.IDP_HOST ?? '127.0.0.1');
const frontPort = Number(args.port ?? env.IDP_PORT ?? 0);

function settings() {
  return {
    client_id: state.clientId,
    lifetime: state.lifetime,
    expires_in: state.expiresIn,
    extra_claims: state.extraClaims,
    require_client_auth: state.requireClientAuth,
    basic_decoding: state.basicDecoding,
    hang: state.hang,
    delay_ms: state.delayMs,
    signing_kid: state.signingKid ?? null,
    pending_faults: state.faults.map((f) => ({ ...f })),
    held_requests: state.held.size,
  };
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function sendJson(res, status, obj, extraHeaders = {}) {
  if (res.destroyed || res.writableEnded) return;
  const body = Buffer.from(JSON.stringify(obj));
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': body.length,
    'Cache-Control': 'no-store',
    ...extraHeaders,
  });
  res.end(body);
}

function sleep(ms, res) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    res.on('close', () => { clearTimeout(t); resolve(); });
  });
}

function formDecode(s) {
  try {
    return decodeURIComponent(s.replace(/\+/g, ' '));
  } catch (e) {
    return null;
  }
}

function parseForm(buf, contentType) {
  const text = buf.toString('utf8');
  if ((contentType || '').toLowerCase().includes('application/json')) {
    try {
      const obj = JSON.parse(text);
      if (obj && typeof obj === 'object' && !Array.isArray(obj)) return obj;
    } catch (e) { /* fall through */ }
    return {};
  }
  const out = {};
  for (const [k, v] of new URLSearchParams(text)) {
    if (k in out) out[k] = [].concat(out[k], v);
    else out[k] = v;
  }
  return out;
}

function checkClient(req, form) {
  // returns {method, client_id, ok, reason}
  const auth = req.headers.authorization;
  let basic = null;
  if (typeof auth === 'string' && /^basic\s+/i.test(auth)) {
    const decoded = Buffer.from(auth.replace(/^basic\s+/i, '').trim(), 'base64').toString('utf8');
    const i = decoded.indexOf(':');
    if (i >= 0) basic = { rawId: decoded.slice(0, i), rawSecret: decoded.slice(i + 1) };
    else basic = { rawId: decoded, rawSecret: '' };
  }
  const bodyHas = typeof form.client_id === 'string' || typeof form.client_secret === 'string';
  const method = basic && bodyHas ? 'basic+body' : basic ? 'basic' : bodyHas ? 'body' : 'none';
  const match = (id, secret) => id === state.clientId && secret === state.clientSecret;
  if (basic) {
    const rfcOk = match(formDecode(basic.rawId), formDecode(basic.rawSecret));
    const rawOk = match(basic.rawId, basic.rawSecret);
    const ok = state.basicDecoding === 'rfc' ? rfcOk : state.basicDecoding === 'raw' ? rawOk : rfcOk || rawOk;
    return {
      method,
      client_id: state.basicDecoding === 'raw' ? basic.rawId : formDecode(basic.rawId),
      ok,
      basic_rfc_ok: rfcOk,
      basic_raw_ok: rawOk,
    };
  }
  if (bodyHas) {
    return { method, client_id: form.client_id ?? null, ok: match(form.client_id, form.client_secret) };
  }
  return { method, client_id: null, ok: false };
}

function takeFault() {
  const f = state.faults[0];
  if (!f) return null;
  f.remaining -= 1;
  if (f.remaining <= 0) state.faults.shift();
  return f;
}

function holdWhileHanging(res) {
  return new Promise((resolve) => {
    if (!state.hang) return resolve(true);
    const release = () => { state.held.delete(release); resolve(true); };
    state.held.add(release);
    res.on('close', () => { if (state.held.delete(release)) resolve(false); });
  });
}

let internalBase = null; // http://127.0.0.1:PORT of the mock server

function forward(req, res, body, record) {
  return new Promise((resolve) => {
    const target = new URL(req.url, internalBase);
    const headers = { ...req.headers };
    delete headers.host;
    headers['content-length'] = String(body.length);
    const up = http.request(target, { method: req.method, headers }, (upRes) => {
      const chunks = [];
      upRes.on('data', (c) => chunks.push(c));
      upRes.on('end', () => {
        const buf = Buffer.concat(chunks);
        if (record) record.status = upRes.statusCode;
        if (!res.destroyed && !res.writableEnded) {
          const h = { ...upRes.headers };
          delete h['transfer-encoding'];
          delete h.connection;
          delete h['keep-alive'];
          h['content-length'] = String(buf.length);
          res.writeHead(upRes.statusCode, h);
          res.end(buf);
        }
        resolve();
      });
    });
    up.on('error', (err) => {
      if (record) record.status = 502;
      sendJson(res, 502, { error: 'server_error', error_description: `front: ${err.message}` });
      resolve();
    });
    up.end(body);
  });
}

async function handleToken(req, res) {
  const body = await readBody(req);
  const form = parseForm(body, req.headers['content-type']);
  const client = checkClient(req, form);
  const safeForm = { ...form };
  if ('client_secret' in safeForm) safeForm.client_secret = '***';
  const record = {
    n: state.tokenRequests.length + 1,
    time: Date.now() / 1000,
    method: req.method,
    path: req.url,
    content_type: req.headers['content-type'] ?? null,
    user_agent: req.headers['user-agent'] ?? null,
    grant_type: form.grant_type ?? null,
    scope: form.scope ?? null,
    audience: form.audience ?? null,
    resource: form.resource ?? null,
    auth_method: client.method,
    client_id: client.client_id,
    client_auth_ok: client.ok,
    form: safeForm,
    outcome: null,
    status: null,
  };
  if ('basic_rfc_ok' in client) {
    record.basic_rfc_ok = client.basic_rfc_ok;
    record.basic_raw_ok = client.basic_raw_ok;
  }
  state.tokenRequests.push(record);
  res.on('close', () => { if (!record.outcome) record.outcome = 'client_gone'; });

  // 1. one-shot faults
  const fault = takeFault();
  if (fault) {
    record.fault = { ...fault, remaining: undefined };
    if (fault.delay_ms) await sleep(fault.delay_ms, res);
    if (res.destroyed) return;
    if (fault.hang) {
      record.outcome = 'hang';
      return; // never answered; the socket stays open until the client leaves or we exit
    }
    if (fault.reset) {
      record.outcome = 'reset';
      req.socket.destroy();
      return;
    }
    if (!fault.pass) {
      const headers = { ...(fault.headers || {}) };
      if (fault.retry_after !== undefined) headers['Retry-After'] = String(fault.retry_after);
      let payload = fault.body ?? '';
      let ctype = fault.content_type;
      if (typeof payload !== 'string') {
        payload = JSON.stringify(payload);
        ctype = ctype ?? 'application/json';
      }
      const buf = Buffer.from(payload);
      const status = fault.status ?? 200;
      res.writeHead(status, {
        'Content-Type': ctype ?? 'text/plain',
        'Content-Length': buf.length,
        ...headers,
      });
      res.end(buf);
      record.outcome = 'fault';
      record.status = status;
      return;
    }
  }

  // 2. persistent hang / delay
  if (state.hang) {
    record.outcome = 'held';
    const released = await holdWhileHanging(res);
    if (!released) { record.outcome = 'client_gone'; return; }
  }
  if (state.delayMs > 0) await sleep(state.delayMs, res);
  if (res.destroyed) { record.outcome = 'client_gone'; return; }

  // 3. client authentication
  if (state.requireClientAuth && !client.ok) {
    record.outcome = 'invalid_client';
    record.status = 401;
    sendJson(res, 401, { error: 'invalid_client', error_description: 'client authentication failed' },
      client.method.startsWith('basic') ? { 'WWW-Authenticate': 'Basic realm="test-idp"' } : {});
    return;
  }

  // 4. the real token endpoint
  record.outcome = 'forwarded';
  record.lifetime = state.lifetime;
  await forward(req, res, body, record);
}

async function handleControl(req, res, server) {
  if (req.method === 'GET') return sendJson(res, 200, settings());
  const body = await readBody(req);
  let c;
  try {
    c = body.length ? JSON.parse(body.toString('utf8')) : {};
  } catch (e) {
    return sendJson(res, 400, { ok: false, error: `bad json: ${e.message}` });
  }
  try {
    if (c.clear_stats) { state.tokenRequests = []; state.jwksRequests = 0; }
    if (c.clear_faults) state.faults = [];
    if ('lifetime' in c) state.lifetime = Number(c.lifetime);
    if ('expires_in' in c) state.expiresIn = c.expires_in;
    if ('extra_claims' in c) state.extraClaims = c.extra_claims;
    if ('client_id' in c) state.clientId = String(c.client_id);
    if ('client_secret' in c) state.clientSecret = String(c.client_secret);
    if ('require_client_auth' in c) state.requireClientAuth = Boolean(c.require_client_auth);
    if ('basic_decoding' in c) state.basicDecoding = String(c.basic_decoding);
    if ('delay_ms' in c) state.delayMs = Number(c.delay_ms) || 0;
    if ('hang' in c) {
      state.hang = Boolean(c.hang);
      if (!state.hang) for (const release of [...state.held]) release();
    }
    if (c.rotate_key) {
      const jwk = await server.issuer.keys.generate('RS256');
      state.signingKid = jwk.kid;
    }
    const add = (f) => {
      const count = f.count === undefined ? 1 : Number(f.count);
      state.faults.push({ ...f, count, remaining: count });
    };
    for (const f of c.faults || []) add(f);
    if (c.reset) add({ reset: true, count: c.reset === true ? 1 : Number(c.reset) });
    if ('garbage' in c) add({ status: 200, body: String(c.garbage), content_type: 'text/html' });
  } catch (e) {
    return sendJson(res, 400, { ok: false, error: e.message });
  }
  return sendJson(res, 200, { ok: true, settings: settings() });
}

async function main() {
  const { OAuth2Server } = await import('oauth2-mock-server');
  const server = new OAuth2Server();
  await server.issuer.keys.generate('RS256');

  // Always sign with the newest key after a rotation (the library round-robins otherwise).
  const keys = server.issuer.keys;
  const origGet = keys.get.bind(keys);
  keys.get = (kid) => origGet(kid ?? state.signingKid);

  server.service.on('beforeTokenSigning', (token, req) => {
    const p = token.payload;
    p.exp = p.iat + state.lifetime;
    const b = (req && req.body) || {};
    if (p.aud === undefined && (b.audience !== undefined || b.resource !== undefined)) {
      p.aud = b.audience ?? b.resource;
    }
    if (b.client_id !== undefined) p.client_id = b.client_id;
    if (state.extraClaims) Object.assign(p, state.extraClaims);
  });
  server.service.on('beforeResponse', (response) => {
    if (response.statusCode !== 200 || !response.body) return;
    if (state.expiresIn === 'omit') delete response.body.expires_in;
    else if (state.expiresIn !== null && state.expiresIn !== undefined) response.body.expires_in = state.expiresIn;
    else response.body.expires_in = state.lifetime;
  });

  const front = http.createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    const done = (p) => p.catch((err) => {
      process.stderr.write(`idp front error: ${err && err.stack}\n`);
      sendJson(res, 500, { error: 'server_error', error_description: 'front layer error' });
    });
    if (path === '/_stats') {
      return sendJson(res, 200, {
        count: state.tokenRequests.length,
        token_requests: state.tokenRequests,
        jwks_requests: state.jwksRequests,
        settings: settings(),
      });
    }
    if (path === '/_control') return done(handleControl(req, res, server));
    if (path === '/token') return done(handleToken(req, res));
    if (path === '/jwks' || path.startsWith('/.well-known/')) {
      if (path === '/jwks') state.jwksRequests += 1;
      return done(readBody(req).then((b) => forward(req, res, b, null)));
    }
    return sendJson(res, 404, { error: 'not_found' });
  });

  await new Promise((resolve, reject) => {
    front.once('error', reject);
    front.listen(frontPort, host, resolve);
  });
  const fport = front.address().port;
  const fhost = host.includes(':') ? `[${host}]` : host;
  const url = `http://${fhost}:${fport}`;
  server.issuer.url = url; // iss and discovery point at the front layer
  await server.start(0, '127.0.0.1');
  internalBase = `http://127.0.0.1:${server.address().port}`;

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    try {
      front.close();
      front.closeAllConnections();
      await Promise.race([server.stop(), new Promise((r) => setTimeout(r, 200))]);
    } catch (e) { /* ignore */ }
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  if (args['watch-stdin']) {
    process.stdin.on('end', stop);
    process.stdin.on('close', stop);
    process.stdin.on('error', stop);
    process.stdin.resume();
  }

  process.stdout.write(JSON.stringify({
    url,
    token_url: `${url}/token`,
    jwks_url: `${url}/jwks`,
    discovery_url: `${url}/.well-known/openid-configuration`,
    issuer: url,
    control_url: `${url}/_control`,
    stats_url: `${url}/_stats`,
    internal_url: internalBase,
    pid: process.pid,
  }) + '\n');
}

main().catch((err) => {
  process.stderr.write(`idp failed to start: ${err && err.stack}\n`);
  process.exit(1);
});
