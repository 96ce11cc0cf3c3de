// The post step (runs even when the job failed or was cancelled): completes the task, so every
// credential of it is revoked, or revokes only this step's lease (complete-task: false). It
// never fails the job: a failure here is a warning, since the credential's TTL still bounds it.
import * as core from '@actions/core';
import { Broker, describeProblem } from './broker.js';
import { IdToken } from './oidc.js';

function leaseList(task) {
  return task.leases.map((l) => `${l.id} ${l.state}`).join(', ') || 'no leases';
}

async function cancelApproval(broker, id) {
  const res = await broker.call('POST', `/v1/approvals/${id}/cancel`);
  if (res.status === 200) core.info(`Cancelled approval request ${id}, still pending when the main step ended.`);
  else if (res.status === 409 || res.status === 404) core.info(`Approval request ${id}: ${res.body?.detail || res.status}.`);
  else throw new Error(`cannot cancel approval request ${id}: ${describeProblem(res.status, res.body)}`);
}

export async function run() {
  const url = core.getState('broker-url');
  if (!url) {
    core.info('Nothing to clean up: the main step asked the broker for nothing.');
    return;
  }
  const task = core.getState('task-id');
  const lease = core.getState('lease-id');
  const approval = core.getState('approval-id');
  const expiresAt = core.getState('expires-at');
  const completeTask = core.getState('complete-task') === 'true';
  const broker = new Broker(url, new IdToken(core.getState('audience')));
  try {
    if (approval && !lease) await cancelApproval(broker, approval);
    if (completeTask) {
      const res = await broker.call('POST', `/v1/tasks/${encodeURIComponent(task)}/complete`);
      if (res.status === 200) core.info(`Completed task ${task}; its credentials are revoked: ${leaseList(res.body)}.`);
      else if (res.status === 404) core.info(`Task ${task} has no credentials at the broker: nothing to revoke.`);
      else throw new Error(`cannot complete task ${task}: ${describeProblem(res.status, res.body)}`);
    } else if (lease) {
      const res = await broker.call('DELETE', `/v1/leases/${encodeURIComponent(lease)}`);
      if (res.status === 200) core.info(`Revoked lease ${lease}: ${res.body.state}.`);
      else if (res.status === 404) core.info(`Lease ${lease} is gone already: nothing to revoke.`);
      else throw new Error(`cannot revoke lease ${lease}: ${describeProblem(res.status, res.body)}`);
    } else {
      core.info('No credential was issued: nothing to revoke.');
    }
  } catch (err) {
    const left = expiresAt ? ` It stays valid until it expires at ${expiresAt}.` : '';
    const what = lease ? `credential (lease ${lease})` : `task ${task}`;
    core.warning(`jit-broker: could not clean up the ${what}: ${err.message}.${left}`);
  }
}

run();
