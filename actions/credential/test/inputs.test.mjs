// The input parsers, as tables.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseDuration } from '../src/duration.js';
import { brokerUrl, defaultTaskId, parseActions, parseParams, readInputs } from '../src/inputs.js';

test('durations are read as the broker writes them', () => {
  for (const [text, seconds] of [['90', 90], ['90s', 90], ['15m', 900], ['1h30m', 5400], ['2d', 172800]]) {
    assert.equal(parseDuration(text, 'ttl'), seconds, text);
  }
  for (const bad of ['', '15 m', '1x', 'm', '-5m', '1.5h']) {
    assert.throws(() => parseDuration(bad, 'ttl'), /ttl: ".*" is not a duration/, bad);
  }
});

test('actions may be separated by commas, spaces or new lines', () => {
  assert.deepEqual(parseActions('read, write\ndeploy  admin'), ['read', 'write', 'deploy', 'admin']);
  assert.throws(() => parseActions(' ,\n'), /actions: name at least one action/);
});

test('params are NAME=VALUE lines; blank lines and comments are skipped; the value keeps its = signs', () => {
  assert.deepEqual(parseParams('public_key = ssh-ed25519 AAAA=\n\n# a comment\nprincipal=deploy'), {
    public_key: 'ssh-ed25519 AAAA=',
    principal: 'deploy',
  });
  assert.throws(() => parseParams('Public=1'), /params: "Public" is not NAME=VALUE/);
  assert.throws(() => parseParams('novalue'), /params: "novalue" is not NAME=VALUE/);
});

test('the default task is one per job run attempt', () => {
  assert.equal(defaultTaskId({ GITHUB_RUN_ID: '77', GITHUB_RUN_ATTEMPT: '2', GITHUB_JOB: 'build' }), '77-2-build');
  assert.throws(() => defaultTaskId({ GITHUB_RUN_ID: '77' }), /GITHUB_RUN_ID \/ GITHUB_RUN_ATTEMPT \/ GITHUB_JOB are missing/);
});

/** What a function writes to stdout (workflow commands such as ::warning::). */
function stdoutOf(fn) {
  const write = process.stdout.write;
  let text = '';
  process.stdout.write = (chunk) => {
    text += chunk;
    return true;
  };
  try {
    return [fn(), text];
  } finally {
    process.stdout.write = write;
  }
}

test('broker-url must be http(s); plain http to a host other than loopback warns', () => {
  assert.deepEqual(stdoutOf(() => brokerUrl('https://jit.example.com/')), ['https://jit.example.com', '']);
  assert.deepEqual(stdoutOf(() => brokerUrl('http://127.0.0.1:8200')), ['http://127.0.0.1:8200', '']);
  const [url, out] = stdoutOf(() => brokerUrl('http://jit.internal:8200/'));
  assert.equal(url, 'http://jit.internal:8200');
  assert.match(out, /^::warning::broker-url http:\/\/jit.internal:8200 is plain http/);
  assert.throws(() => brokerUrl('ftp://jit.example.com'), /broker-url: "ftp:\/\/jit.example.com" must be an https:\/\/ URL/);
  assert.throws(() => brokerUrl('jit.example.com'), /is not a URL/);
});

test('bad inputs fail naming the input, before anything is sent', () => {
  const base = {
    'broker-url': 'https://jit.example.com', audience: 'jit-broker', issuer: 'jwt', resource: 'https://r',
    actions: 'read', ttl: '', purpose: '', task: 'build-1', 'task-ttl': '', params: '', 'export-env': 'false',
    'env-name': 'JIT_CREDENTIAL', 'approval-timeout': '15m', 'complete-task': 'true',
  };
  const cases = [
    [{ task: 'build 1' }, /task: "build 1" may hold only letters/],
    [{ 'export-env': 'true', 'env-name': 'MY-TOKEN' }, /env-name: "MY-TOKEN" is not an environment variable name/],
    [{ ttl: 'soon' }, /ttl: "soon" is not a duration/],
    [{ 'approval-timeout': '15 minutes' }, /approval-timeout: "15 minutes" is not a duration/],
    [{ params: 'PUBLIC_KEY=x' }, /params: "PUBLIC_KEY" is not NAME=VALUE/],
    [{ 'complete-task': 'yes' }, /complete-task/],
  ];
  for (const [over, message] of cases) {
    const saved = { ...process.env };
    for (const [name, value] of Object.entries({ ...base, ...over })) process.env[`INPUT_${name.toUpperCase()}`] = value;
    try {
      assert.throws(() => readInputs(), message, JSON.stringify(over));
    } finally {
      process.env = saved;
    }
  }
  const saved = { ...process.env };
  for (const [name, value] of Object.entries(base)) process.env[`INPUT_${name.toUpperCase()}`] = value;
  try {
    assert.equal(readInputs().task, 'build-1');
  } finally {
    process.env = saved;
  }
});
