// dist/ is what the runner executes: it must be exactly the bundle of src/ (`npm run build`).
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import * as esbuild from 'esbuild';
import { options } from '../build.mjs';
import { ACTION_DIR } from './runner.mjs';

test('the committed dist/ is the bundle of src/ (run `npm run build` and commit dist/)', async () => {
  const fresh = mkdtempSync(join(tmpdir(), 'jit-action-dist-'));
  await esbuild.build(options(fresh));
  const committed = join(ACTION_DIR, 'dist');
  assert.deepEqual(readdirSync(committed).sort(), readdirSync(fresh).sort(), 'dist/ holds other files than a fresh build');
  for (const name of readdirSync(fresh)) {
    assert.ok(readFileSync(join(committed, name)).equals(readFileSync(join(fresh, name))), `dist/${name} is stale`);
  }
});
