// The action's inputs (action.yml), read and checked before anything talks to the broker.
import * as core from '@actions/core';
import { parseDuration } from './duration.js';

const ID = /^[A-Za-z0-9._:@-]{1,128}$/; // the broker's task id and issuer name rule
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const PARAM_NAME = /^[a-z][a-z0-9_]{0,31}$/;

/** The task id when the workflow names none: one task per job run attempt. */
export function defaultTaskId(env = process.env) {
  const parts = [env.GITHUB_RUN_ID, env.GITHUB_RUN_ATTEMPT, env.GITHUB_JOB];
  if (parts.some((p) => !p)) {
    throw new Error('task: not set, and GITHUB_RUN_ID / GITHUB_RUN_ATTEMPT / GITHUB_JOB are missing to derive it');
  }
  return parts.join('-');
}

export function brokerUrl(text) {
  let url;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`broker-url: "${text}" is not a URL`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw new Error(`broker-url: "${text}" must be an https:// URL`);
  }
  if (url.protocol === 'http:' && !['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)) {
    core.warning(`broker-url ${url.origin} is plain http: the job's OIDC token and the credential cross the network unencrypted`);
  }
  return url.href.replace(/\/+$/, '');
}

export function parseActions(text) {
  const actions = text.split(/[\s,]+/).filter(Boolean);
  if (actions.length === 0) throw new Error('actions: name at least one action');
  return actions;
}

export function parseParams(text) {
  const params = {};
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    const name = eq < 0 ? line : line.slice(0, eq).trim();
    if (eq < 0 || !PARAM_NAME.test(name)) {
      throw new Error(`params: "${name}" is not NAME=VALUE with a lower-case NAME (a-z, 0-9, _)`);
    }
    params[name] = line.slice(eq + 1).trim();
  }
  return params;
}

export function readInputs() {
  const opt = (name) => core.getInput(name).trim();
  const task = opt('task') || defaultTaskId();
  if (!ID.test(task)) throw new Error(`task: "${task}" may hold only letters, digits and . _ : @ - (at most 128)`);
  const issuer = core.getInput('issuer', { required: true }).trim();
  if (!ID.test(issuer)) throw new Error(`issuer: "${issuer}" is not an issuer instance name`);
  const envName = opt('env-name');
  const exportEnv = core.getBooleanInput('export-env');
  if (exportEnv && !ENV_NAME.test(envName)) throw new Error(`env-name: "${envName}" is not an environment variable name`);
  const ttl = opt('ttl');
  const taskTtl = opt('task-ttl');
  if (ttl) parseDuration(ttl, 'ttl');
  if (taskTtl) parseDuration(taskTtl, 'task-ttl');
  return {
    brokerUrl: brokerUrl(core.getInput('broker-url', { required: true }).trim()),
    audience: core.getInput('audience', { required: true }).trim(),
    issuer,
    resource: core.getInput('resource', { required: true }).trim(),
    actions: parseActions(core.getInput('actions', { required: true })),
    ttl,
    purpose: core.getInput('purpose'),
    task,
    taskTtl,
    params: parseParams(core.getInput('params')),
    exportEnv,
    envName,
    approvalTimeout: parseDuration(core.getInput('approval-timeout', { required: true }), 'approval-timeout'),
    completeTask: core.getBooleanInput('complete-task'),
  };
}
