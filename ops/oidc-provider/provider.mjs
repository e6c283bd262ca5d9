// A real OpenID Connect provider for m87's tests (npm `oidc-provider`), on loopback.
//
//   node ops/oidc-provider/provider.mjs [PORT]
//
// Prints exactly one line `oidc-provider listening on http://127.0.0.1:PORT` on stdout when it is
// ready (PORT 0, the default, picks a free port; the line names the one chosen). The issuer is
// that URL.
//
// What it offers:
// - the device authorization grant (RFC 8628) with the provider's own pages (`/device`);
// - development interactions: any login name signs in, and the login name becomes the `email`
//   claim with `email_verified: true`;
// - one public client (no secret) with the device-code and refresh-token grants;
// - a default resource (the API audience) whose access tokens are RS256 JWTs carrying `email` and
//   `email_verified`;
// - refresh tokens for the device flow, rotated on use; token revocation;
// - key rotation on demand: `POST /__test/rotate` (or SIGUSR2) makes the provider sign new
//   tokens with a new RSA key (new `kid`) and publish old and new keys in its JWKS. The endpoint
//   answers `{"kid": <new kid>, "kids": [<all published kids, newest first>]}`.
//
// Environment (all optional):
//   PORT                 port, when not given as the first argument (default 0: a free port)
//   CLIENT_ID            the public client's id (default `m87-cli`)
//   AUDIENCE             the default resource / access token audience (default `https://m87.test/api`)
//   ACCESS_TOKEN_TTL     access token lifetime in seconds (default 60)
//   ID_TOKEN_TTL         ID token lifetime in seconds (default 600)
//   REFRESH_TOKEN_TTL    refresh token lifetime in seconds (default 86400)
//   DEVICE_CODE_TTL      device code lifetime in seconds (default 600)
//   SESSION_TTL          login session lifetime in seconds (default 3600)
//   ADMIN_TOKEN          when set, `POST /__test/rotate` needs `Authorization: Bearer <ADMIN_TOKEN>`
//   EXIT_WITH_STDIN=1    exit when stdin closes (test harnesses set this, so that a killed test
//                        run leaves no provider behind)
//
// Test-only: the signing keys live in memory and are new on every start; nothing is persisted.

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider, { errors } from 'oidc-provider';

function envInt(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number.parseInt(raw, 10);
  if (!Number.isInteger(value) || value < 1 || String(value) !== raw.trim()) {
    console.error(`oidc-provider: ${name} must be a positive whole number of seconds, got "${raw}"`);
    process.exit(2);
  }
  return value;
}

const portArg = process.argv[2] ?? process.env.PORT ?? '0';
const requestedPort = Number.parseInt(portArg, 10);
if (!Number.isInteger(requestedPort) || requestedPort < 0 || requestedPort > 65535) {
  console.error(`oidc-provider: the port must be a number from 0 to 65535, got "${portArg}"`);
  process.exit(2);
}

const CLIENT_ID = process.env.CLIENT_ID || 'm87-cli';
const AUDIENCE = process.env.AUDIENCE || 'https://m87.test/api';
const ACCESS_TOKEN_TTL = envInt('ACCESS_TOKEN_TTL', 60);
const ID_TOKEN_TTL = envInt('ID_TOKEN_TTL', 600);
const REFRESH_TOKEN_TTL = envInt('REFRESH_TOKEN_TTL', 86400);
const DEVICE_CODE_TTL = envInt('DEVICE_CODE_TTL', 600);
const SESSION_TTL = envInt('SESSION_TTL', 3600);
const ADMIN_TOKEN = process.env.ADMIN_TOKEN || '';
const SCOPES = ['openid', 'offline_access', 'email', 'profile'];
const DEVICE_CODE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';

// Signing keys, newest first. Every key stays published after a rotation, so tokens signed
// before it keep validating until they expire.
const signingKeys = [];
let generation = 0;

function newSigningKey() {
  generation += 1;
  // The key comes back as PEM and is parsed into a key object of its own before the JWK export.
  // Exporting the generated key object directly can deadlock Node.js 20: a garbage collection
  // during the export finalises the key-generation job, which takes the lock the export holds
  // (seen in CI: the provider hung before listening).
  const { privateKey: pem } = crypto.generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  const jwk = crypto.createPrivateKey(pem).export({ format: 'jwk' });
  jwk.kid = `m87-test-${generation}-${crypto.randomBytes(4).toString('hex')}`;
  jwk.alg = 'RS256';
  jwk.use = 'sig';
  signingKeys.unshift(jwk);
  return jwk.kid;
}

// The session and interaction cookies must stay valid across a rotation (which builds a new
// provider instance), so their keys are fixed for the life of the process.
const cookieKeys = [crypto.randomBytes(32).toString('hex')];

// Storage shared by every provider instance of this process (a rotation builds a new instance;
// sessions, grants, device codes and refresh tokens must survive it). In memory, with expiry;
// implements oidc-provider's documented adapter interface.
const store = new Map(); // key -> { payload, expiresAt (ms epoch or Infinity) }
const grantMembers = new Map(); // grantId -> Set of keys

function storeGet(key) {
  const entry = store.get(key);
  if (!entry) return undefined;
  if (entry.expiresAt <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return entry.payload;
}

function storeSet(key, payload, expiresIn) {
  const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : Infinity;
  store.set(key, { payload, expiresAt });
}

// Drop expired entries now and then, so a long-running provider does not grow without bound.
setInterval(() => {
  const now = Date.now();
  for (const [key, entry] of store) {
    if (entry.expiresAt <= now) store.delete(key);
  }
}, 60_000).unref();

class SharedMemoryAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    storeSet(key, payload, expiresIn);
    if (this.model === 'Session' && payload.uid) {
      storeSet(`sessionUid:${payload.uid}`, id, expiresIn);
    }
    if (payload.userCode) {
      storeSet(`userCode:${payload.userCode}`, id, expiresIn);
    }
    if (payload.grantId) {
      let members = grantMembers.get(payload.grantId);
      if (!members) {
        members = new Set();
        grantMembers.set(payload.grantId, members);
      }
      members.add(key);
    }
  }

  async find(id) {
    return storeGet(this.key(id));
  }

  async findByUid(uid) {
    const id = storeGet(`sessionUid:${uid}`);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = storeGet(`userCode:${userCode}`);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const payload = storeGet(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of grantMembers.get(grantId) ?? []) store.delete(key);
    grantMembers.delete(grantId);
  }
}

// Accounts: any login name is an account; the name is the email, and it is verified.
async function findAccount(_ctx, id) {
  return {
    accountId: id,
    async claims() {
      return { sub: id, email: id, email_verified: true, name: id };
    },
  };
}

function buildProvider(issuer) {
  const currentKid = signingKeys[0].kid;
  const configuration = {
    clients: [
      {
        client_id: CLIENT_ID,
        client_name: 'm87 CLI',
        token_endpoint_auth_method: 'none',
        grant_types: [DEVICE_CODE_GRANT, 'refresh_token'],
        response_types: [],
        redirect_uris: [],
      },
    ],
    adapter: SharedMemoryAdapter,
    jwks: { keys: signingKeys.map((k) => ({ ...k })) },
    cookies: { keys: cookieKeys },
    scopes: SCOPES,
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
    },
    findAccount,
    features: {
      devInteractions: { enabled: true },
      deviceFlow: { enabled: true },
      revocation: { enabled: true },
      userinfo: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => AUDIENCE,
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, resourceIndicator) => {
          if (resourceIndicator !== AUDIENCE) {
            throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
          }
          return {
            audience: AUDIENCE,
            scope: 'openid offline_access email profile',
            accessTokenTTL: ACCESS_TOKEN_TTL,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256', kid: currentKid } },
          };
        },
      },
    },
    // The API learns who the caller is from the access token alone.
    async extraTokenClaims(_ctx, token) {
      if (!token.accountId) return undefined;
      return { email: token.accountId, email_verified: true };
    },
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: true,
    ttl: {
      AccessToken: ACCESS_TOKEN_TTL,
      IdToken: ID_TOKEN_TTL,
      RefreshToken: REFRESH_TOKEN_TTL,
      DeviceCode: DEVICE_CODE_TTL,
      Grant: REFRESH_TOKEN_TTL,
      Session: SESSION_TTL,
      Interaction: DEVICE_CODE_TTL,
    },
  };
  const provider = new Provider(issuer, configuration);
  provider.on('server_error', (_ctx, err) => {
    console.error('oidc-provider: server error:', err);
  });
  return provider;
}

let issuer;
let handler; // the current provider's request listener; replaced on rotation

function rotate() {
  const kid = newSigningKey();
  handler = buildProvider(issuer).callback();
  console.error(`oidc-provider: rotated signing key, now signing with ${kid}`);
  return kid;
}

function rotateEndpoint(req, res) {
  if (req.method !== 'POST') {
    res.writeHead(405, { allow: 'POST', 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: 'method_not_allowed' }));
    return;
  }
  if (ADMIN_TOKEN && req.headers.authorization !== `Bearer ${ADMIN_TOKEN}`) {
    res.writeHead(401, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: 'unauthorized' }));
    return;
  }
  const kid = rotate();
  res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify({ kid, kids: signingKeys.map((k) => k.kid) }));
}

newSigningKey();

const server = http.createServer((req, res) => {
  if (req.url === '/__test/rotate' || req.url?.startsWith('/__test/rotate?')) {
    rotateEndpoint(req, res);
    return;
  }
  if (!handler) {
    res.writeHead(503);
    res.end();
    return;
  }
  handler(req, res);
});

server.on('error', (err) => {
  console.error(`oidc-provider: cannot listen on 127.0.0.1:${requestedPort}: ${err.message}`);
  process.exit(1);
});

server.listen(requestedPort, '127.0.0.1', () => {
  const { port } = server.address();
  issuer = `http://127.0.0.1:${port}`;
  handler = buildProvider(issuer).callback();
  process.stdout.write(`oidc-provider listening on ${issuer}\n`);
});

process.on('SIGUSR2', () => {
  if (issuer) rotate();
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(0));
}
if (process.env.EXIT_WITH_STDIN === '1') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
