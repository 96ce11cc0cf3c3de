import { createRequire as __jitRequire } from 'node:module'; const require = __jitRequire(import.meta.url);
import {
  Broker,
  IdToken,
  debug,
  describeProblem,
  exportVariable,
  getBooleanInput,
  getInput,
  info,
  saveState,
  setFailed,
  setOutput,
  setSecret,
  summary,
  warning
} from "./shared-JO2LKG6B.js";

// src/duration.js
var UNITS = { s: 1, m: 60, h: 3600, d: 86400 };
function parseDuration(text, name) {
  const value = String(text).trim();
  if (/^\d+$/.test(value)) return Number(value);
  const parts = [...value.matchAll(/(\d+)([smhd])/g)];
  if (value === "" || parts.map((m) => m[0]).join("") !== value) {
    throw new Error(`${name}: "${value}" is not a duration (examples: 90s, 15m, 1h30m)`);
  }
  return parts.reduce((sum, m) => sum + Number(m[1]) * UNITS[m[2]], 0);
}

// src/inputs.js
var ID = /^[A-Za-z0-9._:@-]{1,128}$/;
var ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
var PARAM_NAME = /^[a-z][a-z0-9_]{0,31}$/;
function defaultTaskId(env = process.env) {
  const parts = [env.GITHUB_RUN_ID, env.GITHUB_RUN_ATTEMPT, env.GITHUB_JOB];
  if (parts.some((p) => !p)) {
    throw new Error("task: not set, and GITHUB_RUN_ID / GITHUB_RUN_ATTEMPT / GITHUB_JOB are missing to derive it");
  }
  return parts.join("-");
}
function brokerUrl(text) {
  let url;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`broker-url: "${text}" is not a URL`);
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    throw new Error(`broker-url: "${text}" must be an https:// URL`);
  }
  if (url.protocol === "http:" && !["127.0.0.1", "localhost", "[::1]"].includes(url.hostname)) {
    warning(`broker-url ${url.origin} is plain http: the job's OIDC token and the credential cross the network unencrypted`);
  }
  return url.href.replace(/\/+$/, "");
}
function parseActions(text) {
  const actions = text.split(/[\s,]+/).filter(Boolean);
  if (actions.length === 0) throw new Error("actions: name at least one action");
  return actions;
}
function parseParams(text) {
  const params = {};
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const eq = line.indexOf("=");
    const name = eq < 0 ? line : line.slice(0, eq).trim();
    if (eq < 0 || !PARAM_NAME.test(name)) {
      throw new Error(`params: "${name}" is not NAME=VALUE with a lower-case NAME (a-z, 0-9, _)`);
    }
    params[name] = line.slice(eq + 1).trim();
  }
  return params;
}
function readInputs() {
  const opt = (name) => getInput(name).trim();
  const task = opt("task") || defaultTaskId();
  if (!ID.test(task)) throw new Error(`task: "${task}" may hold only letters, digits and . _ : @ - (at most 128)`);
  const issuer = getInput("issuer", { required: true }).trim();
  if (!ID.test(issuer)) throw new Error(`issuer: "${issuer}" is not an issuer instance name`);
  const envName = opt("env-name");
  const exportEnv = getBooleanInput("export-env");
  if (exportEnv && !ENV_NAME.test(envName)) throw new Error(`env-name: "${envName}" is not an environment variable name`);
  const ttl = opt("ttl");
  const taskTtl = opt("task-ttl");
  if (ttl) parseDuration(ttl, "ttl");
  if (taskTtl) parseDuration(taskTtl, "task-ttl");
  return {
    brokerUrl: brokerUrl(getInput("broker-url", { required: true }).trim()),
    audience: getInput("audience", { required: true }).trim(),
    issuer,
    resource: getInput("resource", { required: true }).trim(),
    actions: parseActions(getInput("actions", { required: true })),
    ttl,
    purpose: getInput("purpose"),
    task,
    taskTtl,
    params: parseParams(getInput("params")),
    exportEnv,
    envName,
    approvalTimeout: parseDuration(getInput("approval-timeout", { required: true }), "approval-timeout"),
    completeTask: getBooleanInput("complete-task")
  };
}

// src/main.js
var POLL_WAIT_S = 20;
var Failure = class extends Error {
};
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
    return `the broker did not accept this job's OIDC token: ${text}
Check that the broker trusts this repository's token issuer with the audience "${inp.audience}".`;
  }
  if (status === 403) return `the broker's policy denied the request: ${text}`;
  if (status === 409) return `the broker refused the request for task ${inp.task}: ${text}`;
  return `the broker refused the request: ${text}`;
}
async function writeSummary(build) {
  if (!process.env.GITHUB_STEP_SUMMARY) return;
  try {
    await build(summary).write();
  } catch (err) {
    debug(`cannot write the job summary: ${err.message}`);
  }
}
function announceApproval(a) {
  info(
    `Approval needed: grant ${a.grant} needs ${a.needed} more approval(s) from ${a.approvers.join(", ")}; the request expires at ${a.expires_at}.`
  );
  info(`Approval request ${a.approval_id}: ${a.link}`);
  info(`An approver runs: jit approve ${a.approval_id}   (or: jit deny ${a.approval_id} --reason "...")`);
  return writeSummary(
    (s) => s.addHeading("jit-broker: approval needed", 3).addRaw(`Grant <code>${a.grant}</code> needs ${a.needed} more approval(s) from ${a.approvers.join(", ")}.`, true).addRaw("Approval request: ").addLink(a.link, a.link).addBreak().addRaw(`Approvers: <code>jit approve ${a.approval_id}</code>; expires at ${a.expires_at}.`, true)
  );
}
async function waitForApproval(broker, pending, inp) {
  const id = pending.approval_id;
  saveState("approval-id", id);
  await announceApproval(pending);
  const deadline = Date.now() + inp.approvalTimeout * 1e3;
  let view = pending;
  let needed = pending.needed;
  while (view.state === "pending") {
    const left = Math.floor((deadline - Date.now()) / 1e3);
    if (left <= 0) {
      const cancel = await broker.call("POST", `/v1/approvals/${id}/cancel`).catch(() => null);
      const outcome = cancel && cancel.status === 200 ? "it was cancelled" : "it could not be cancelled";
      throw new Failure(`no decision on approval request ${id} within approval-timeout (${inp.approvalTimeout}s); ${outcome}`);
    }
    const wait = Math.max(1, Math.min(POLL_WAIT_S, left));
    const res = await broker.call("GET", `/v1/approvals/${id}?wait=${wait}`, { timeoutMs: (wait + 30) * 1e3 });
    if (res.status !== 200) throw new Failure(`cannot follow approval request ${id}: ${explain(res.status, res.body, inp)}`);
    view = res.body;
    if (view.state === "pending" && view.needed !== needed) {
      needed = view.needed;
      info(`Approval ${id}: ${needed} more approval(s) needed.`);
    }
  }
  if (view.credential) {
    const by = view.reviews.filter((r) => r.decision === "approve").map((r) => r.person);
    info(`Approved by ${by.join(", ")}.`);
    return view.credential;
  }
  if (view.state === "denied") {
    const reasons = view.reviews.filter((r) => r.decision === "deny").map((r) => `  - ${r.person}: ${r.reason}`);
    throw new Failure(`approval request ${id} was denied:
${reasons.join("\n")}`);
  }
  if (view.state === "approved") {
    throw new Failure(`approval request ${id} was approved, but its credential was already collected (lease ${view.lease_id})`);
  }
  throw new Failure(`approval request ${id} is ${view.state}: no credential was issued`);
}
function deliver(issued, inp) {
  const secret = issued.credential.secret;
  setSecret(secret);
  saveState("lease-id", issued.lease_id);
  saveState("expires-at", issued.expires_at);
  setOutput("credential", secret);
  setOutput("lease-id", issued.lease_id);
  setOutput("expires-at", issued.expires_at);
  setOutput("task-id", issued.task_id);
  if (inp.exportEnv) exportVariable(inp.envName, secret);
  const capped = issued.ttl_capped_by ? ` (TTL capped by the ${issued.ttl_capped_by})` : "";
  info(
    `Credential issued: lease ${issued.lease_id}, task ${issued.task_id}, grant ${issued.grant}, expires at ${issued.expires_at}${capped}.` + (inp.exportEnv ? ` Exported as $${inp.envName}.` : "")
  );
  return writeSummary(
    (s) => s.addHeading("jit-broker credential", 3).addTable([
      [
        { data: "lease", header: true },
        { data: "task", header: true },
        { data: "grant", header: true },
        { data: "resource", header: true },
        { data: "actions", header: true },
        { data: "expires at", header: true }
      ],
      [issued.lease_id, issued.task_id, issued.grant, issued.resource, issued.actions.join(" "), issued.expires_at]
    ])
  );
}
async function run() {
  const inp = readInputs();
  const idToken = new IdToken(inp.audience);
  await idToken.get();
  saveState("broker-url", inp.brokerUrl);
  saveState("audience", inp.audience);
  saveState("task-id", inp.task);
  saveState("complete-task", String(inp.completeTask));
  const broker = new Broker(inp.brokerUrl, idToken);
  info(`Requesting ${inp.actions.join(" ")} on ${inp.resource} from issuer ${inp.issuer} for task ${inp.task}.`);
  const res = await broker.call("POST", "/v1/credentials", { body: requestBody(inp) });
  let issued;
  if (res.status === 201) issued = res.body;
  else if (res.status === 202) issued = await waitForApproval(broker, res.body, inp);
  else throw new Failure(explain(res.status, res.body, inp));
  await deliver(issued, inp);
}
run().catch((err) => setFailed(`jit-broker: ${err.message || err}`));
export {
  run
};
