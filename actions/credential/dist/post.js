import { createRequire as __jitRequire } from 'node:module'; const require = __jitRequire(import.meta.url);
import {
  Broker,
  IdToken,
  describeProblem,
  getState,
  info,
  warning
} from "./shared-JO2LKG6B.js";

// src/post.js
function leaseList(task) {
  return task.leases.map((l) => `${l.id} ${l.state}`).join(", ") || "no leases";
}
async function cancelApproval(broker, id) {
  const res = await broker.call("POST", `/v1/approvals/${id}/cancel`);
  if (res.status === 200) info(`Cancelled approval request ${id}, still pending when the main step ended.`);
  else if (res.status === 409 || res.status === 404) info(`Approval request ${id}: ${res.body?.detail || res.status}.`);
  else throw new Error(`cannot cancel approval request ${id}: ${describeProblem(res.status, res.body)}`);
}
async function run() {
  const url = getState("broker-url");
  if (!url) {
    info("Nothing to clean up: the main step asked the broker for nothing.");
    return;
  }
  const task = getState("task-id");
  const lease = getState("lease-id");
  const approval = getState("approval-id");
  const expiresAt = getState("expires-at");
  const completeTask = getState("complete-task") === "true";
  const broker = new Broker(url, new IdToken(getState("audience")));
  try {
    if (approval && !lease) await cancelApproval(broker, approval);
    if (completeTask) {
      const res = await broker.call("POST", `/v1/tasks/${encodeURIComponent(task)}/complete`);
      if (res.status === 200) info(`Completed task ${task}; its credentials are revoked: ${leaseList(res.body)}.`);
      else if (res.status === 404) info(`Task ${task} has no credentials at the broker: nothing to revoke.`);
      else throw new Error(`cannot complete task ${task}: ${describeProblem(res.status, res.body)}`);
    } else if (lease) {
      const res = await broker.call("DELETE", `/v1/leases/${encodeURIComponent(lease)}`);
      if (res.status === 200) info(`Revoked lease ${lease}: ${res.body.state}.`);
      else if (res.status === 404) info(`Lease ${lease} is gone already: nothing to revoke.`);
      else throw new Error(`cannot revoke lease ${lease}: ${describeProblem(res.status, res.body)}`);
    } else {
      info("No credential was issued: nothing to revoke.");
    }
  } catch (err) {
    const left = expiresAt ? ` It stays valid until it expires at ${expiresAt}.` : "";
    const what = lease ? `credential (lease ${lease})` : `task ${task}`;
    warning(`jit-broker: could not clean up the ${what}: ${err.message}.${left}`);
  }
}
run();
export {
  run
};
