// The input parsers, as tables.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseDuration } from '../src/duration.js';
import { defaultTaskId, parseActions, parseParams } from '../src/inputs.js';

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
