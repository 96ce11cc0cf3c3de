// The action end to end: dist/main.js and dist/post.js as real node processes, with the
// environment the Actions runner gives them, against a real `jit serve` (github preset) that
// trusts a loopback fake of the Actions OIDC endpoint. See runner.mjs.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, test } from 'node:test';
import { IdToken } from '../src/oidc.js';
import { E2E, Job, approval, approve, brokerCall, deny, introspect, killStragglers, lease, needsBroker, verifyJwt } from './runner.mjs';

const ORDERS = { 'broker-url': E2E.broker, resource: 'https://orders.internal', actions: 'read' };
const PROD = { 'broker-url': E2E.broker, resource: 'https://prod.internal', actions: 'deploy' };

/** Every line of stdout that contains `secret`. */
const linesWith = (text, secret) => text.split('\n').filter((l) => l.includes(secret));

async function assertRevoked(credential, leaseId) {
  assert.deepEqual(await introspect(credential), { active: false });
  assert.equal((await lease(leaseId)).state, 'revoked');
}

const APPROVAL_ANNOUNCED = /An approver runs: jit approve ([0-9a-f]{32})/; // the last line of the announcement

describe('the GitHub Action', { skip: needsBroker }, () => {
  afterEach(killStragglers);

  test('main issues a verifiable, masked credential; post completes the task and it is revoked', async () => {
    const job = new Job();
    const main = await job.run('main', { ...ORDERS, actions: 'read, write', ttl: '10m', purpose: 'deploy orders' });
    assert.equal(main.code, 0, main.stdout + main.stderr);
    const cred = main.outputs.credential;
    const claims = await verifyJwt(cred, 'https://orders.internal');
    assert.equal(claims.jti, main.outputs['lease-id']);
    assert.equal(claims.scope, 'read write');
    assert.equal(claims.task_id, job.defaultTask);
    assert.equal(main.outputs['task-id'], job.defaultTask);
    assert.ok(Date.parse(main.outputs['expires-at']) > Date.now());
    // Masked: the only line of the log that holds the secret is the add-mask command.
    assert.deepEqual(linesWith(main.stdout, cred), [`::add-mask::${cred}`]);
    assert.ok(!main.stderr.includes(cred));
    // So is the job's OIDC token: every JWT in the log is inside an add-mask command.
    const jwts = main.stdout.split('\n').filter((l) => /eyJ[\w-]+\.[\w-]+\.[\w-]+/.test(l));
    assert.equal(jwts.length, 2, 'the OIDC token and the credential');
    assert.ok(jwts.every((l) => l.startsWith('::add-mask::')), jwts.join('\n'));
    assert.ok(!main.stateText.includes(cred), 'the secret must never reach the step state');
    assert.ok(!main.summary.includes(cred));
    assert.match(main.summary, new RegExp(main.outputs['lease-id'].replace('.', '\\.')));
    assert.deepEqual(main.exported, {}, 'export-env is off by default');
    assert.deepEqual((await introspect(cred)).active, true);

    const post = await job.post(main);
    assert.equal(post.code, 0, post.stdout + post.stderr);
    assert.match(post.stdout, new RegExp(`Completed task ${job.defaultTask}; its credentials are revoked: .*revoked`));
    await assertRevoked(cred, main.outputs['lease-id']);
  });

  test('export-env exports the masked credential; complete-task false revokes only that lease', async () => {
    const job = new Job();
    const first = await job.run('main', { ...ORDERS, 'export-env': 'true', 'env-name': 'ORDERS_TOKEN', 'complete-task': 'false' });
    assert.equal(first.code, 0, first.stdout + first.stderr);
    const cred = first.outputs.credential;
    assert.equal(first.exported.ORDERS_TOKEN, cred);
    assert.deepEqual(linesWith(first.stdout, cred), [`::add-mask::${cred}`]);
    const second = await job.run('main', { ...ORDERS, actions: 'write' });
    assert.equal(second.code, 0, second.stdout + second.stderr);
    assert.equal(second.outputs['task-id'], first.outputs['task-id'], 'one task per job');

    // Post steps run in reverse order; the first action's post revokes its own lease only.
    const firstPost = await job.post(first);
    assert.equal(firstPost.code, 0, firstPost.stdout + firstPost.stderr);
    assert.match(firstPost.stdout, new RegExp(`Revoked lease ${first.outputs['lease-id'].replace('.', '\\.')}: revoked`));
    await assertRevoked(cred, first.outputs['lease-id']);
    assert.equal((await introspect(second.outputs.credential)).active, true);
    const secondPost = await job.post(second);
    assert.equal(secondPost.code, 0);
    await assertRevoked(second.outputs.credential, second.outputs['lease-id']);
  });

  test('a policy denial fails main with the reasons, and post has nothing to revoke', async () => {
    const job = new Job();
    const main = await job.run('main', { ...ORDERS, actions: 'read delete' });
    assert.equal(main.code, 1);
    assert.match(main.stdout, /::error::jit-broker: the broker's policy denied the request: Forbidden \(403\)/);
    assert.match(main.stdout, /%0A  - platform\/orders: actions not allowed: delete/);
    assert.deepEqual(main.outputs, {});
    const post = await job.post(main);
    assert.equal(post.code, 0, post.stdout + post.stderr);
    assert.match(post.stdout, new RegExp(`Task ${job.defaultTask} has no credentials at the broker: nothing to revoke`));
    assert.doesNotMatch(post.stdout, /::warning::/);
  });

  test('a main step that fails after the credential was issued still gets it revoked by post', async () => {
    const job = new Job();
    const broken = join(job.dir, 'output-is-a-directory');
    mkdirSync(broken);
    const main = await job.run('main', ORDERS, { env: { GITHUB_OUTPUT: broken } });
    assert.equal(main.code, 1);
    const leaseId = main.state['lease-id'];
    assert.ok(leaseId, 'the lease id is in the state before any output is written');
    // The secret was masked before the step tried to use it (the output write that failed).
    const mask = main.stdout.match(/^::add-mask::(.+)$/gm).map((l) => l.slice('::add-mask::'.length));
    const cred = mask.find((m) => m.split('.').length === 3 && JSON.parse(Buffer.from(m.split('.')[1], 'base64url')).jti === leaseId);
    assert.ok(cred, 'the credential was masked');
    assert.equal((await introspect(cred)).active, true);
    const post = await job.post(main);
    assert.equal(post.code, 0, post.stdout + post.stderr);
    await assertRevoked(cred, leaseId);
  });

  test('an approval-required grant waits; once approved main gets the credential and the summary links the request', async () => {
    const job = new Job();
    const step = job.start('main', { ...PROD, purpose: 'release 1.2.3' });
    const [, id] = await step.waitFor(APPROVAL_ANNOUNCED);
    assert.match(step.stdout, /Approval needed: grant platform\/prod-deploy needs 1 more approval\(s\) from alice/);
    assert.match(step.stdout, new RegExp(`Approval request ${id}: ${E2E.broker}/v1/approvals/${id}\n`));
    const decided = await approve(id);
    assert.equal(decided.status, 200, JSON.stringify(decided.body));
    const main = await step.done;
    assert.equal(main.code, 0, main.stdout + main.stderr);
    assert.match(main.stdout, /Approved by alice\./);
    assert.match(main.summary, new RegExp(`<a href="${E2E.broker}/v1/approvals/${id}">`));
    const cred = main.outputs.credential;
    const claims = await verifyJwt(cred, 'https://prod.internal');
    assert.equal(claims.scope, 'deploy');
    assert.equal(claims.task_id, job.defaultTask);
    assert.deepEqual(linesWith(main.stdout, cred), [`::add-mask::${cred}`]);
    const post = await job.post(main);
    assert.equal(post.code, 0, post.stdout + post.stderr);
    await assertRevoked(cred, main.outputs['lease-id']);
  });

  test('a denied approval fails main with the approver and the reason', async () => {
    const job = new Job();
    const step = job.start('main', PROD);
    const [, id] = await step.waitFor(APPROVAL_ANNOUNCED);
    assert.equal((await deny(id, 'change freeze until Monday')).status, 200);
    const main = await step.done;
    assert.equal(main.code, 1);
    assert.match(main.stdout, new RegExp(`::error::jit-broker: approval request ${id} was denied:%0A  - alice: change freeze until Monday`));
    const post = await job.post(main);
    assert.equal(post.code, 0, post.stdout + post.stderr);
    assert.match(post.stdout, new RegExp(`Approval request ${id}: the approval request is already denied\\.`));
    assert.match(post.stdout, /nothing to revoke/);
  });

  test('an approval request cancelled while main waits fails main saying so', async () => {
    const job = new Job();
    const step = job.start('main', PROD);
    const [, id] = await step.waitFor(APPROVAL_ANNOUNCED);
    const cancelled = await brokerCall('POST', `/v1/approvals/${id}/cancel`); // by the workload itself
    assert.equal(cancelled.status, 200, JSON.stringify(cancelled.body));
    const main = await step.done;
    assert.equal(main.code, 1);
    assert.match(main.stdout, new RegExp(`::error::jit-broker: approval request ${id} is cancelled: no credential was issued`));
  });

  test('a main step killed while waiting for approval: post cancels the pending request', async () => {
    const job = new Job();
    const step = job.start('main', PROD);
    const [, id] = await step.waitFor(APPROVAL_ANNOUNCED);
    step.child.kill('SIGKILL');
    const main = await step.done;
    assert.equal(main.signal, 'SIGKILL');
    const post = await job.post(main);
    assert.equal(post.code, 0, post.stdout + post.stderr);
    assert.match(post.stdout, new RegExp(`Cancelled approval request ${id}`));
    assert.equal((await approval(id)).body.state, 'cancelled');
    assert.equal((await approve(id)).status, 409, 'nobody can approve it any more');
  });

  test('no decision within approval-timeout cancels the request and fails main', async () => {
    const job = new Job();
    const main = await job.run('main', { ...PROD, 'approval-timeout': '1s' });
    assert.equal(main.code, 1);
    const id = main.state['approval-id'];
    assert.match(main.stdout, new RegExp(`no decision on approval request ${id} within approval-timeout \\(1s\\); it was cancelled`));
    assert.equal((await approval(id)).body.state, 'cancelled');
  });

  test('without the id-token permission main fails naming it, and post does nothing', async () => {
    const job = new Job({ idToken: false });
    const main = await job.run('main', ORDERS);
    assert.equal(main.code, 1);
    assert.match(main.stdout, /::error::jit-broker: this job cannot get an OIDC token: ACTIONS_ID_TOKEN_REQUEST_URL/);
    assert.match(main.stdout, /permissions: id-token: write/);
    const post = await job.post(main);
    assert.equal(post.code, 0);
    assert.match(post.stdout, /Nothing to clean up: the main step asked the broker for nothing/);
  });

  test('a refused connection and a 503 with Retry-After are retried, by main and by post, until the broker answers', async () => {
    // A port with nothing listening yet; once main reports the refused connection, a proxy
    // starts there that answers 503 once, then forwards to the broker.
    const port = await new Promise((resolve) => {
      const probe = net.createServer().listen(0, '127.0.0.1', () => {
        const p = probe.address().port;
        probe.close(() => resolve(p));
      });
    });
    let unavailable = 1;
    const proxy = http.createServer((req, res) => {
      if (unavailable-- > 0) {
        res.writeHead(503, { 'Content-Type': 'application/problem+json', 'Retry-After': '2' });
        res.end(JSON.stringify({ title: 'Service Unavailable', status: 503, detail: 'redis is not answering' }));
        return;
      }
      const upstream = http.request(E2E.broker + req.url, { method: req.method, headers: req.headers }, (up) => {
        res.writeHead(up.statusCode, up.headers);
        up.pipe(res);
      });
      req.pipe(upstream);
    });
    try {
      const job = new Job();
      const step = job.start('main', { ...ORDERS, 'broker-url': `http://127.0.0.1:${port}` });
      await step.waitFor(/cannot reach the broker at http:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED\); retrying in [\d.]+s \(attempt 1 of 5\)/);
      await new Promise((resolve) => proxy.listen(port, '127.0.0.1', resolve));
      const main = await step.done;
      assert.equal(main.code, 0, main.stdout + main.stderr);
      assert.match(main.stdout, /is unavailable: Service Unavailable \(503\): redis is not answering; retrying in 2\.0s/);
      await verifyJwt(main.outputs.credential, 'https://orders.internal');
      unavailable = 1; // the post step retries too
      const post = await job.post(main);
      assert.equal(post.code, 0, post.stdout + post.stderr);
      assert.match(post.stdout, /is unavailable: Service Unavailable \(503\): redis is not answering; retrying in 2\.0s \(attempt 1 of 5\)/);
      assert.match(post.stdout, /Completed task/);
      await assertRevoked(main.outputs.credential, main.outputs['lease-id']);
    } finally {
      proxy.close();
    }
  });

  test('a post step that cannot clean up warns, naming the credential and its expiry, and does not fail the job', async () => {
    const job = new Job();
    const main = await job.run('main', ORDERS);
    assert.equal(main.code, 0, main.stdout + main.stderr);
    // A token the broker does not accept (wrong audience): a 401, not retried.
    const post = await job.post(main, { state: { audience: 'not-the-broker' } });
    assert.equal(post.code, 0);
    const leaseId = main.outputs['lease-id'];
    assert.match(post.stdout, new RegExp(`::warning::jit-broker: could not clean up the credential \\(lease ${leaseId.replace('.', '\\.')}\\): cannot complete task`));
    assert.match(post.stdout, /Not authenticated \(401\): audience not accepted/);
    assert.match(post.stdout, new RegExp(`It stays valid until it expires at ${main.outputs['expires-at']}`));
    assert.equal((await introspect(main.outputs.credential)).active, true);
    const retry = await job.post(main);
    assert.equal(retry.code, 0);
    await assertRevoked(main.outputs.credential, leaseId);
  });

  test('the OIDC token is fetched again when the one held is about to expire', async () => {
    process.env.ACTIONS_ID_TOKEN_REQUEST_URL = E2E.idTokenUrl;
    process.env.ACTIONS_ID_TOKEN_REQUEST_TOKEN = E2E.requestToken;
    let now = Date.now() / 1000;
    const source = new IdToken('jit-broker', () => now);
    const jti = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url')).jti;
    const first = await source.get();
    const exp = JSON.parse(Buffer.from(first.split('.')[1], 'base64url')).exp;
    now = exp - 120;
    assert.equal(jti(await source.get()), jti(first), 'two minutes left: the token held is used');
    now = exp - 30;
    const second = await source.get();
    assert.notEqual(jti(second), jti(first), 'thirty seconds left: a fresh token');
  });
});
