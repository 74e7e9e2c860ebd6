// A second, independent authorization server for tests: panva's oidc-provider (OpenID Certified),
// configured for machine clients only. Unlike tests/peers/idp (oauth2-mock-server behind a front
// layer we wrote), every client authentication, resource indicator and JWT here is checked by the
// library itself.
//
// Usage: node server.js --config CONFIG.json [--watch-stdin]
// CONFIG.json (written by tests/peers/oidc_process.py):
//   clients:        oidc-provider client metadata (client_secret_basic/_post, private_key_jwt with
//                   the test's JWKS, tls_client_auth with tls_client_auth_subject_dn)
//   resources:      {"<uri>": {"scope": "a b", "ttl": seconds}}: RFC 8707 resource servers; their
//                   access tokens are RS256 JWTs with aud=<uri>; any other resource is invalid_target
//   scopes:         scopes the provider knows (clients may only ask for those in their metadata)
//   tls:            {"cert", "key", "ca"} PEM paths: a second listener over TLS that asks for client
//                   certificates signed by "ca" (needed by tls_client_auth)
//   subject_issuers: [{"issuer", "audience", "jwks"}]: whose JWTs the token-exchange grant accepts
//   reusable_assertion_clients: client ids whose client assertions may be presented more than once
//                   (a federated workload token reused until it rotates, as Entra ID accepts);
//                   every other client's assertion jti is accepted once, as the library does
// Prints one JSON line when ready: {"url", "issuer", "token_url", "jwks_url", "tls_url",
// "tls_token_url", "pid"}. Exits on SIGTERM/SIGINT, and with --watch-stdin when stdin closes.
//
// GET /_stats (plain listener): {"count", "token_requests": [...]} — per token request: listener,
// grant_type, client_id, auth_method (as registered), status, error, resource, scope, form keys,
// the client assertion's header and claims (never its signature), whether a client certificate came.
// GET /_stats/clear forgets them. GET /_control?token_delay_ms=N answers every token request N ms
// late from now on (0: at once).

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';

import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify } from 'jose';
import Provider, { errors } from 'oidc-provider';
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    if (!argv[i].startsWith('--')) continue;
    const name = argv[i].slice(2);
    out[name] = i + 1 < argv.length && !argv[i + 1].startsWith('--') ? argv[++i] : true;
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const config = JSON.parse(fs.readFileSync(args.config, 'utf8'));
const resources = config.resources || {};
const reusable = new Set(config.reusable_assertion_clients || []);
const subjectIssuers = (config.subject_issuers || []).map((s) => ({
  issuer: s.issuer, audience: s.audience, keys: createLocalJWKSet(s.jwks),
}));
const tokenRequests = [];
let tokenDelayMs = 0;

function resourceServerInfo(resource) {
  const r = resources[resource];
  if (!r) throw new errors.InvalidTarget(`unknown resource ${resource}`);
  return {
    scope: r.scope || '',
    audience: resource,
    accessTokenTTL: r.ttl || 60,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: 'RS256' } },
  };
}

// The library's in-memory store, except that assertions of the "reusable" clients are not
// remembered for replay detection (their reuse was agreed, OpenID Connect Core §9).
class TestAdapter extends MemoryAdapter {
  async upsert(id, payload, expiresIn) {
    if (this.model === 'ReplayDetection' && reusable.has(payload.iss)) return undefined;
    return super.upsert(id, payload, expiresIn);
  }
}
const adapterStore = new Map(); // a test server lives for one test module: no eviction needed
const adapter = (model) => new TestAdapter(model, adapterStore, 15);

function peerCertificate(ctx) {
  const socket = ctx.req.socket;
  const cert = typeof socket.getPeerX509Certificate === 'function' ? socket.getPeerX509Certificate() : undefined;
  return cert ? cert.toString() : undefined;
}

async function verifySubjectToken(token) {
  let lastError = new Error('no trusted issuer');
  for (const s of subjectIssuers) {
    try {
      const { payload } = await jwtVerify(token, s.keys, { issuer: s.issuer, audience: s.audience });
      return payload;
    } catch (e) {
      lastError = e;
    }
  }
  throw lastError;
}

// RFC 8693 token exchange: the subject token must be a JWT from a trusted issuer, for the configured
// audience, unexpired and correctly signed; the issued access token is for one resource server.
async function tokenExchange(ctx) {
  const { client, params } = ctx.oidc;
  if (!params.subject_token) throw new errors.InvalidRequest('missing subject_token');
  if (params.subject_token_type !== JWT_TYPE && params.subject_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest(`unsupported subject_token_type ${params.subject_token_type}`);
  }
  let subject;
  try {
    subject = await verifySubjectToken(params.subject_token);
  } catch (e) {
    throw new errors.InvalidGrant(`subject_token refused (${e.code || e.name})`);
  }
  const resource = params.resource;
  if (!resource || Array.isArray(resource)) {
    throw new errors.InvalidTarget('exactly one resource indicator is required');
  }
  const info = resourceServerInfo(resource);
  const allowed = new Set(info.scope.split(' '));
  const scope = (params.scope || info.scope).split(' ').filter((s) => allowed.has(s)).join(' ');
  const token = new ctx.oidc.provider.ClientCredentials({ client, scope: scope || undefined });
  token.resourceServer = new ctx.oidc.provider.ResourceServer(resource, info);
  ctx.state.exchangedSubject = { sub: subject.sub, iss: subject.iss };
  const value = await token.save();
  ctx.body = {
    access_token: value,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: 'Bearer',
    expires_in: token.expiration,
    scope: token.scope,
  };
}

function safeAssertion(assertion) {
  try {
    const h = decodeProtectedHeader(assertion);
    const c = decodeJwt(assertion);
    return {
      header: { alg: h.alg, kid: h.kid, typ: h.typ, x5t: h.x5t, 'x5t#S256': h['x5t#S256'] },
      claims: { iss: c.iss, sub: c.sub, aud: c.aud, jti: c.jti, iat: c.iat, nbf: c.nbf, exp: c.exp },
    };
  } catch (e) {
    return { malformed: true };
  }
}

function record(ctx, listener) {
  const oidc = ctx.oidc;
  const params = (oidc && oidc.params) || {};
  let body = ctx.body;
  if (typeof body === 'string') {
    try { body = JSON.parse(body); } catch (e) { body = {}; }
  }
  tokenRequests.push({
    n: tokenRequests.length + 1,
    time: Date.now() / 1000,
    listener,
    status: ctx.status,
    error: (body && body.error) || null,
    error_description: (body && body.error_description) || null,
    grant_type: params.grant_type ?? null,
    client_id: oidc?.client?.clientId ?? params.client_id ?? null,
    auth_method: oidc?.client?.clientAuthMethod ?? null,
    resource: params.resource ?? null,
    scope: params.scope ?? null,
    issued_scope: (body && body.scope) || null,
    form_keys: Object.keys(params).filter((k) => params[k] !== undefined).sort(),
    basic_auth: typeof ctx.headers.authorization === 'string',
    client_certificate: Boolean(peerCertificate(ctx)),
    assertion: typeof params.client_assertion === 'string' ? safeAssertion(params.client_assertion) : null,
    subject_token_type: params.subject_token_type ?? null,
  });
}

async function main() {
  const plain = http.createServer();
  await new Promise((resolve, reject) => {
    plain.once('error', reject);
    plain.listen(0, '127.0.0.1', resolve);
  });
  const issuer = `http://127.0.0.1:${plain.address().port}`;

  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const signingJwk = { ...privateKey.export({ format: 'jwk' }), kid: 'oidc-test-1', alg: 'RS256', use: 'sig' };

  const provider = new Provider(issuer, {
    adapter,
    clients: config.clients,
    jwks: { keys: [signingJwk] },
    scopes: config.scopes || ['openid'],
    clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'tls_client_auth'],
    cookies: { keys: [crypto.randomBytes(16).toString('hex')] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      revocation: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        useGrantedResource: () => false,
        getResourceServerInfo: (ctx, resource) => resourceServerInfo(resource),
      },
      mTLS: {
        enabled: true,
        tlsClientAuth: true,
        getCertificate: peerCertificate,
        certificateAuthorized: (ctx) => ctx.req.socket.authorized === true,
        certificateSubjectMatches: (ctx, property, expected) => {
          const pem = peerCertificate(ctx);
          if (!pem || property !== 'tls_client_auth_subject_dn') return false;
          return new crypto.X509Certificate(pem).subject === expected;
        },
      },
    },
    extraTokenClaims: (ctx, token) => {
      const subject = ctx?.state?.exchangedSubject;
      if (!subject) return undefined;
      // RFC 8693 §4.1: the actor is the client; the exchanged subject kept in its own claims.
      return { act: { sub: token.clientId }, subject_sub: subject.sub, subject_iss: subject.iss };
    },
  });
  provider.registerGrantType(
    TOKEN_EXCHANGE, tokenExchange,
    ['subject_token', 'subject_token_type', 'resource', 'audience', 'scope', 'requested_token_type'],
    ['resource', 'audience'],
  );
  provider.on('server_error', (ctx, err) => process.stderr.write(`oidc server_error: ${err && err.stack}\n`));

  provider.use(async (ctx, next) => {
    if (ctx.path === '/token' && tokenDelayMs > 0) {
      await new Promise((resolve) => setTimeout(resolve, tokenDelayMs));
    }
    await next();
    if (ctx.path === '/token') record(ctx, ctx.req.socket.encrypted ? 'tls' : 'http');
  });
  const callback = provider.callback();

  plain.on('request', (req, res) => {
    const url = new URL(req.url, 'http://x');
    const path = url.pathname;
    if (path === '/_control') {
      if (url.searchParams.has('token_delay_ms')) tokenDelayMs = Number(url.searchParams.get('token_delay_ms')) || 0;
      const body = Buffer.from(JSON.stringify({ token_delay_ms: tokenDelayMs }));
      res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': body.length });
      res.end(body);
      return;
    }
    if (path === '/_stats' || path === '/_stats/clear') {
      if (path === '/_stats/clear') tokenRequests.length = 0;
      const body = Buffer.from(JSON.stringify({ count: tokenRequests.length, token_requests: tokenRequests }));
      res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': body.length });
      res.end(body);
      return;
    }
    callback(req, res);
  });

  let tls = null;
  if (config.tls) {
    tls = https.createServer({
      cert: fs.readFileSync(config.tls.cert),
      key: fs.readFileSync(config.tls.key),
      ca: fs.readFileSync(config.tls.ca),
      requestCert: true, // asked for, not required: the library decides per client
      rejectUnauthorized: false,
    }, callback);
    await new Promise((resolve, reject) => {
      tls.once('error', reject);
      tls.listen(0, '127.0.0.1', resolve);
    });
  }

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    for (const server of [plain, tls]) {
      if (!server) continue;
      server.close();
      server.closeAllConnections();
    }
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

  const tlsUrl = tls ? `https://127.0.0.1:${tls.address().port}` : null;
  process.stdout.write(JSON.stringify({
    url: issuer,
    issuer,
    token_url: `${issuer}/token`,
    jwks_url: `${issuer}/jwks`,
    tls_url: tlsUrl,
    tls_token_url: tlsUrl ? `${tlsUrl}/token` : null,
    pid: process.pid,
  }) + '\n');
}

main().catch((err) => {
  process.stderr.write(`oidc-provider test server failed to start: ${err && err.stack}\n`);
  process.exit(1);
});
