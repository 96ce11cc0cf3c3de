// What the GitHub Actions runner does around a JavaScript action, done here for real node
// processes: INPUT_* variables (with action.yml's defaults), the GITHUB_STATE / GITHUB_OUTPUT /
// GITHUB_ENV / GITHUB_STEP_SUMMARY files, STATE_* for the post step, the run's variables and the
// OIDC token request variables. And the broker calls the tests make to check the outcome.
//
// The broker and the fake Actions OIDC endpoint are started by tests/e2e/test_github_action.py,
// which runs `node --test` with their addresses in JIT_E2E_* variables.
import { spawn } from 'node:child_process';
import { createPublicKey, verify } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';

export const ACTION_DIR = fileURLToPath(new URL('..', import.meta.url));
export const E2E = {
  broker: process.env.JIT_E2E_BROKER_URL,
  idTokenUrl: process.env.JIT_E2E_ID_TOKEN_URL, // ACTIONS_ID_TOKEN_REQUEST_URL
  requestToken: process.env.JIT_E2E_REQUEST_TOKEN, // a job of the repository the policy trusts
  approverToken: process.env.JIT_E2E_APPROVER_TOKEN, // alice, the grant's approver
};
/** Skip reason for the end-to-end tests when run outside their pytest harness. */
export const needsBroker = E2E.broker ? false : 'needs a broker: run .venv/bin/pytest tests/e2e/test_github_action.py';

const action = parse(readFileSync(join(ACTION_DIR, 'action.yml'), 'utf8'));

/** Parse a file-command file (name=value or name<<DELIMITER heredoc lines), as the runner does. */
export function parseFileCommands(text) {
  const out = {};
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (!line) continue;
    const heredoc = line.match(/^([^=<]+)<<(.+)$/);
    if (heredoc) {
      const value = [];
      for (i++; i < lines.length && lines[i] !== heredoc[2]; i++) value.push(lines[i]);
      out[heredoc[1]] = value.join('\n');
    } else {
      const eq = line.indexOf('=');
      out[line.slice(0, eq)] = line.slice(eq + 1);
    }
  }
  return out;
}

function read(path) {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

const live = new Set();

/** Kill the steps a failed test left running (one waiting for an approval would hang the run). */
export function killStragglers() {
  for (const child of live) child.kill('SIGKILL');
  live.clear();
}

/** One job: its run variables, and the state its main steps leave for their post steps. */
export class Job {
  constructor({ requestToken = E2E.requestToken, idToken = true } = {}) {
    this.dir = mkdtempSync(join(tmpdir(), 'jit-action-'));
    this.runId = String(1_000_000_000 + Math.floor(Math.random() * 1_000_000_000));
    this.name = 'deploy';
    this.env = {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      GITHUB_ACTIONS: 'true',
      CI: 'true',
      GITHUB_RUN_ID: this.runId,
      GITHUB_RUN_ATTEMPT: '1',
      GITHUB_JOB: this.name,
      GITHUB_REPOSITORY: 'acme/orders',
      GITHUB_WORKSPACE: this.dir,
      RUNNER_TEMP: this.dir,
    };
    if (idToken) {
      this.env.ACTIONS_ID_TOKEN_REQUEST_URL = E2E.idTokenUrl;
      this.env.ACTIONS_ID_TOKEN_REQUEST_TOKEN = requestToken;
    }
    this.steps = 0;
  }

  get defaultTask() {
    return `${this.runId}-1-${this.name}`;
  }

  /** Start dist/<script>.js like the runner does; `state` feeds a post step (STATE_*). */
  start(script, inputs = {}, { state = {}, env = {} } = {}) {
    const step = join(this.dir, `step-${++this.steps}`);
    mkdirSync(step);
    const files = {
      GITHUB_STATE: join(step, 'state'),
      GITHUB_OUTPUT: join(step, 'output'),
      GITHUB_ENV: join(step, 'env'),
      GITHUB_STEP_SUMMARY: join(step, 'summary'),
    };
    for (const path of Object.values(files)) writeFileSync(path, '');
    const vars = { ...this.env, ...files };
    for (const [name, spec] of Object.entries(action.inputs)) {
      const value = name in inputs ? inputs[name] : spec.default;
      if (value !== undefined) vars[`INPUT_${name.replace(/ /g, '_').toUpperCase()}`] = String(value);
    }
    for (const [name, value] of Object.entries(state)) vars[`STATE_${name}`] = value;
    Object.assign(vars, env);
    for (const [k, v] of Object.entries(vars)) if (v === undefined) delete vars[k];
    const child = spawn(process.execPath, [join(ACTION_DIR, 'dist', `${script}.js`)], {
      env: vars,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    live.add(child);
    child.on('exit', () => live.delete(child));
    const run = { child, stdout: '', stderr: '', files: { ...files, ...env } };
    const waiters = [];
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      run.stdout += chunk;
      for (const w of waiters.splice(0)) if (!w(run.stdout)) waiters.push(w);
    });
    child.stderr.on('data', (chunk) => (run.stderr += chunk));
    /** Resolves with the match once stdout matches `re`; rejects if the step ends first. */
    run.waitFor = (re) =>
      new Promise((resolve, reject) => {
        const check = (text) => {
          const m = text.match(re);
          if (m) resolve(m);
          return Boolean(m);
        };
        if (check(run.stdout)) return;
        waiters.push(check);
        child.on('exit', () => reject(new Error(`step ended before printing ${re}:\n${run.stdout}\n${run.stderr}`)));
      });
    run.done = new Promise((resolve) => {
      child.on('close', (code, signal) => {
        const f = run.files;
        resolve({
          code,
          signal,
          stdout: run.stdout,
          stderr: run.stderr,
          stateText: read(f.GITHUB_STATE),
          state: parseFileCommands(read(f.GITHUB_STATE)),
          outputs: parseFileCommands(read(f.GITHUB_OUTPUT)),
          exported: parseFileCommands(read(f.GITHUB_ENV)),
          summary: read(f.GITHUB_STEP_SUMMARY),
        });
      });
    });
    return run;
  }

  run(script, inputs, opts) {
    return this.start(script, inputs, opts).done;
  }

  /** The post step of a main step that ended with `main` (its state file). */
  post(main, opts = {}) {
    return this.run('post', {}, { ...opts, state: { ...main.state, ...(opts.state || {}) } });
  }
}

// -- the broker, as the tests check it -------------------------------------------------------

/** A fresh OIDC token of a job, straight from the fake Actions endpoint. */
export async function jobToken(requestToken = E2E.requestToken, audience = 'jit-broker') {
  const res = await fetch(`${E2E.idTokenUrl}&audience=${encodeURIComponent(audience)}`, {
    headers: { Authorization: `Bearer ${requestToken}` },
  });
  if (res.status !== 200) throw new Error(`id token: HTTP ${res.status}`);
  return (await res.json()).value;
}

export async function brokerCall(method, path, { token, body, form } = {}) {
  const headers = { Authorization: `Bearer ${token ?? (await jobToken())}` };
  let payload;
  if (form) {
    payload = new URLSearchParams(form).toString();
    headers['Content-Type'] = 'application/x-www-form-urlencoded';
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers['Content-Type'] = 'application/json';
  }
  const res = await fetch(E2E.broker + path, { method, headers, body: payload });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

export async function introspect(credential) {
  const res = await brokerCall('POST', '/oauth/introspect', { form: { token: credential } });
  if (res.status !== 200) throw new Error(`introspection: HTTP ${res.status} ${JSON.stringify(res.body)}`);
  return res.body;
}

export async function lease(id) {
  const res = await brokerCall('GET', `/v1/leases/${id}`);
  if (res.status !== 200) throw new Error(`lease ${id}: HTTP ${res.status}`);
  return res.body;
}

export const approve = (id) => brokerCall('POST', `/v1/approvals/${id}/approve`, { token: E2E.approverToken, body: {} });
export const deny = (id, reason) => brokerCall('POST', `/v1/approvals/${id}/deny`, { token: E2E.approverToken, body: { reason } });
export const approval = (id) => brokerCall('GET', `/v1/approvals/${id}`, { token: E2E.approverToken });

/** Verify a broker JWT (EdDSA) against the broker's /.well-known/jwks.json; returns its claims. */
export async function verifyJwt(jwt, audience) {
  const [h, p, s] = jwt.split('.');
  const header = JSON.parse(Buffer.from(h, 'base64url'));
  const claims = JSON.parse(Buffer.from(p, 'base64url'));
  if (header.alg !== 'EdDSA') throw new Error(`unexpected alg ${header.alg}`);
  const jwks = await (await fetch(`${E2E.broker}/.well-known/jwks.json`)).json();
  const jwk = jwks.keys.find((k) => k.kid === header.kid);
  if (!jwk) throw new Error(`no key ${header.kid} in the broker's JWKS`);
  const ok = verify(null, Buffer.from(`${h}.${p}`), createPublicKey({ key: jwk, format: 'jwk' }), Buffer.from(s, 'base64url'));
  if (!ok) throw new Error('signature does not verify');
  const now = Date.now() / 1000;
  if (claims.iss !== E2E.broker) throw new Error(`iss ${claims.iss}`);
  if (![claims.aud].flat().includes(audience)) throw new Error(`aud ${claims.aud}`);
  if (!(claims.exp > now)) throw new Error('expired');
  return claims;
}
