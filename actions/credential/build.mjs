// Bundles src/main.js and src/post.js, with @actions/core, into dist/ (committed: the runner
// executes dist/ as it is, with no npm install). `npm run build`; a test checks dist/ is current.
import { rmSync } from 'node:fs';
import * as esbuild from 'esbuild';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));

export function options(outdir = 'dist') {
  return {
    absWorkingDir: here,
    entryPoints: ['src/main.js', 'src/post.js'],
    chunkNames: 'shared-[hash]',
    outdir,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'esm',
    splitting: true, // main and post share one chunk with @actions/core
    // Bundled CommonJS dependencies call require(); give the ES module bundle one.
    banner: { js: "import { createRequire as __jitRequire } from 'node:module'; const require = __jitRequire(import.meta.url);" },
    legalComments: 'eof',
    logLevel: 'warning',
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const outdir = process.argv[2] || 'dist';
  rmSync(new URL(outdir, `file://${here}`), { recursive: true, force: true }); // no stale chunk survives
  await esbuild.build(options(outdir));
}
