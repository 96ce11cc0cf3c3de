// The main step: the job's OIDC token in, one credential out (after a human approval if the
// grant needs one). Everything the post step needs goes to the step state, never the secret.
import * as core from '@actions/core';
import { Broker, describeProblem } from './broker.js';
import { readInputs } from './inputs.js';
import { IdToken } from './oidc.js';

const POLL_WAIT_S = 20;

class Failure extends Error {}

function requestBody(inp) {
  const task = { id: inp.task, purpose: inp.purpose };
  if (inp.taskTtl) task.ttl = inp.taskTtl;
  const body = { issuer: inp.issuer, resource: inp.resource, actions: inp.actions, task };
  if (inp.ttl) body.ttl = inp.ttl;
  if (Object.keys(inp.params).length) body.params = inp.params;
  return body;
}

function explain(status, problem, inp) {
  const text = describeProblem(status, problem);
  if (status === 401) {
    return (
      `the broker did not accept this job's OIDC token: ${text}\n` +
      `Check that the broker trusts this repository's token issuer with the audience "${inp.audience}".`
    );
  }
  if (status === 403) return `the broker's policy denied the request: ${text}`;
  if (status === 409) return `the broker refused the request for task ${inp.task}: ${text}`;
  return `the broker refused the request: ${text}`;
}

async function writeSummary(build) {
  if (!process.env.GITHUB_STEP_SUMMARY) return;
  try {
    await build(core.summary).write();
  } catch (err) {
    core.debug(`cannot write the job summary: ${err.message}`);
  }
}

function announceApproval(a) {
  core.info(
    `Approval needed: grant ${a.grant} needs ${a.needed} more approval(s) from ${a.approvers.join(', ')}; ` +
      `the request expires at ${a.expires_at}.`,
  );
  core.info(`Approval request ${a.approval_id}: ${a.link}`);
  core.info(`An approver runs: jit approve ${a.approval_id}   (or: jit deny ${a.approval_id} --reason "...")`);
  return writeSummary((s) =>
    s
      .addHeading('jit-broker: approval needed', 3)
      .addRaw(`Grant <code>${a.grant}</code> needs ${a.needed} more approval(s) from ${a.approvers.join(', ')}.`, true)
      .addRaw('Approval request: ')
      .addLink(a.link, a.link)
      .addBreak()
      .addRaw(`Approvers: <code>jit approve ${a.approval_id}</code>; expires at ${a.expires_at}.`, true),
  );
}

async function waitForApproval(broker, pending, inp) {
  const id = pending.approval_id;
  core.saveState('approval-id', id);
  await announceApproval(pending);
  const deadline = Date.now() + inp.approvalTimeout * 1000;
  let view = pending;
  let needed = pending.needed;
  while (view.state === 'pending') {
    const left = Math.floor((deadline - Date.now()) / 1000);
    if (left <= 0) {
      const cancel = await broker.call('POST', `/v1/approvals/${id}/cancel`).catch(() => null);
      const outcome = cancel && cancel.status === 200 ? 'it was cancelled' : 'it could not be cancelled';
      throw new Failure(`no decision on approval request ${id} within approval-timeout (${inp.approvalTimeout}s); ${outcome}`);
    }
    const wait = Math.max(1, Math.min(POLL_WAIT_S, left));
    const res = await broker.call('GET', `/v1/approvals/${id}?wait=${wait}`, { timeoutMs: (wait + 30) * 1000 });
    if (res.status !== 200) throw new Failure(`cannot follow approval request ${id}: ${explain(res.status, res.body, inp)}`);
    view = res.body;
    if (view.state === 'pending' && view.needed !== needed) {
      needed = view.needed;
      core.info(`Approval ${id}: ${needed} more approval(s) needed.`);
    }
  }
  if (view.credential) {
    const by = view.reviews.filter((r) => r.decision === 'approve').map((r) => r.person);
    core.info(`Approved by ${by.join(', ')}.`);
    return view.credential;
  }
  if (view.state === 'denied') {
    const reasons = view.reviews.filter((r) => r.decision === 'deny').map((r) => `  - ${r.person}: ${r.reason}`);
    throw new Failure(`approval request ${id} was denied:\n${reasons.join('\n')}`);
  }
  if (view.state === 'approved') {
    throw new Failure(`approval request ${id} was approved, but its credential was already collected (lease ${view.lease_id})`);
  }
  throw new Failure(`approval request ${id} is ${view.state}: no credential was issued`);
}

function deliver(issued, inp) {
  const secret = issued.credential.secret;
  core.setSecret(secret); // before the secret is used anywhere
  core.saveState('lease-id', issued.lease_id);
  core.saveState('expires-at', issued.expires_at);
  core.setOutput('credential', secret);
  core.setOutput('lease-id', issued.lease_id);
  core.setOutput('expires-at', issued.expires_at);
  core.setOutput('task-id', issued.task_id);
  if (inp.exportEnv) core.exportVariable(inp.envName, secret);
  const capped = issued.ttl_capped_by ? ` (TTL capped by the ${issued.ttl_capped_by})` : '';
  core.info(
    `Credential issued: lease ${issued.lease_id}, task ${issued.task_id}, grant ${issued.grant}, ` +
      `expires at ${issued.expires_at}${capped}.` +
      (inp.exportEnv ? ` Exported as $${inp.envName}.` : ''),
  );
  return writeSummary((s) =>
    s.addHeading('jit-broker credential', 3).addTable([
      [
        { data: 'lease', header: true },
        { data: 'task', header: true },
        { data: 'grant', header: true },
        { data: 'resource', header: true },
        { data: 'actions', header: true },
        { data: 'expires at', header: true },
      ],
      [issued.lease_id, issued.task_id, issued.grant, issued.resource, issued.actions.join(' '), issued.expires_at],
    ]),
  );
}

export async function run() {
  const inp = readInputs();
  const idToken = new IdToken(inp.audience);
  await idToken.get(); // fail early, and clearly, without the id-token permission
  // What the post step needs, before the request: a request lost half-way still gets cleaned.
  core.saveState('broker-url', inp.brokerUrl);
  core.saveState('audience', inp.audience);
  core.saveState('task-id', inp.task);
  core.saveState('complete-task', String(inp.completeTask));
  const broker = new Broker(inp.brokerUrl, idToken);
  core.info(`Requesting ${inp.actions.join(' ')} on ${inp.resource} from issuer ${inp.issuer} for task ${inp.task}.`);
  const res = await broker.call('POST', '/v1/credentials', { body: requestBody(inp) });
  let issued;
  if (res.status === 201) issued = res.body;
  else if (res.status === 202) issued = await waitForApproval(broker, res.body, inp);
  else throw new Failure(explain(res.status, res.body, inp));
  await deliver(issued, inp);
}

run().catch((err) => core.setFailed(`jit-broker: ${err.message || err}`));
