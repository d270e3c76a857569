// web/check.sh's driver: serves the built page directory on localhost, opens it in the
// system's Chromium (headless, WebGPU on SwiftShader; Playwright's own browsers are never
// downloaded), prints one line per trace and the quick benchmark, runs the demo page, saves
// its screenshot and compares its final losses with the native demo's. Exits non-zero on any
// failure.
//
//   node check.mjs --dist DIR [--native-csv FILE] [--demo-steps N] [--screenshot FILE]
//                  [--bench-steps N] [--json FILE] [--timeout-s S]
import { chromium } from 'playwright-core';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]]);
  return acc;
}, []));
const dist = path.resolve(args.dist ?? 'dist');
const timeoutMs = 1000 * Number(args['timeout-s'] ?? 1500);
const demoSteps = Number(args['demo-steps'] ?? 300);
const benchSteps = Number(args['bench-steps'] ?? 5);
let failed = false;
const fail = (line) => { failed = true; console.log(line); };
const fixed = (x, d = 3) => (typeof x === 'number' ? x.toFixed(d) : String(x));

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm', '.json': 'application/json', '.safetensors': 'application/octet-stream', '.png': 'image/png' };
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  const file = path.join(dist, decodeURIComponent(url.pathname));
  if (!file.startsWith(dist) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream' });
  fs.createReadStream(file).pipe(res);
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const base = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless=new', '--no-sandbox', '--enable-unsafe-webgpu', '--enable-unsafe-swiftshader',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--no-first-run', '--disable-quic',
  ],
});

async function open(url, resultName) {
  const page = await browser.newPage({ viewport: { width: 1180, height: 690 } });
  const errors = [];
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(m.text());
    if (process.env.WEB_CHECK_VERBOSE) console.log(`  [console.${m.type()}] ${m.text()}`);
  });
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${base}/${url}`);
  await page.waitForFunction((name) => window[name] !== undefined, resultName, { timeout: timeoutMs, polling: 500 });
  return { page, result: await page.evaluate((name) => window[name], resultName), errors };
}

const report = {};
try {
  // 1. The traces and the quick benchmark.
  const t0 = Date.now();
  const check = await open(`check.html?bench_steps=${benchSteps}${args['bench'] === '0' ? '&bench=0' : ''}`, 'checkResult');
  const r = check.result;
  report.check = r;
  if (r.fatal) fail(`FAIL page: ${r.fatal}`);
  else {
    console.log(`adapter: ${r.adapter.description}; max storage buffers per stage ${r.adapter.max_storage_buffers_per_shader_stage}`);
    for (const t of r.traces) {
      if (t.error) { fail(`FAIL ${t.name}: ${t.error}`); continue; }
      const line = `${t.passed ? 'PASS' : 'FAIL'} ${t.name.replace('.safetensors', '').padEnd(44)} worst ${fixed(t.worst_ratio).padStart(6)} of tolerance (${t.worst_kind} at ${t.worst_at}), ${t.steps} steps, ${t.params} params, ${t.ms.toFixed(0)} ms; resumed from checkpoint bytes at step ${Math.floor(t.steps / 2)}: ${t.resumed_identical ? 'bit-identical' : 'DIFFERENT'}`;
      if (t.passed) console.log(line); else fail(line);
      for (const e of t.device_errors) fail(`  device error: ${e}`);
    }
    if (r.traces.length === 0) fail('FAIL no traces');
    const s = r.stepAsync;
    const sLine = `step_async: 3 steps bit-identical to CpuAdamW: ${s.identical}; a destroyed gradient buffer reported as an Err: ${s.error_reported ? JSON.stringify(s.error_reported.split('\n')[0]) : s.error ?? 'no'}`;
    if (s.passed && (s.device_errors ?? []).length === 0) console.log(`PASS ${sLine}`);
    else fail(`FAIL ${sLine}; uncaptured: ${JSON.stringify(s.device_errors)}`);
    if (r.bench) {
      console.log(`quick benchmark (${r.bench.steps} steps per round, best of 2, page clock):`);
      for (const b of r.bench.rows) {
        console.log(`  ${b.workload.padEnd(20)} ${String(b.params).padStart(9)} params  fused ${b.fused_ms.toFixed(2).padStart(8)} ms ${b.fused_gbps.toFixed(2).padStart(6)} GB/s  copy ${b.copy_ms.toFixed(2).padStart(8)} ms ${b.copy_gbps.toFixed(2).padStart(6)} GB/s  fused/copy ${b.fused_vs_copy.toFixed(2)}`);
      }
      for (const e of r.bench.device_errors) fail(`  device error: ${e}`);
    }
  }
  for (const e of check.errors) fail(`FAIL console error: ${e}`);
  console.log(`check page: ${((Date.now() - t0) / 1000).toFixed(1)} s`);

  // 2. The demo page, against the native demo.
  if (args['demo'] !== '0') {
    const t1 = Date.now();
    const demo = await open(`demo.html?steps=${demoSteps}&auto=1`, 'demoResult');
    report.demo = demo.result;
    if (args.screenshot) {
      await demo.page.screenshot({ path: args.screenshot, fullPage: true });
      console.log(`screenshot: ${args.screenshot}`);
    }
    for (const e of demo.errors) fail(`FAIL demo console error: ${e}`);
    if (demo.result.fatal) fail(`FAIL demo: ${demo.result.fatal}`);
    else {
      console.log(`demo: ${demoSteps} steps x ${Object.keys(demo.result.runs).length} schedules in ${demo.result.seconds.toFixed(1)} s (page clock), ${((Date.now() - t1) / 1000).toFixed(1)} s in all`);
      if (args['native-csv']) compareDemo(demo.result, fs.readFileSync(args['native-csv'], 'utf8'));
    }
  }
} catch (e) {
  fail(`FAIL ${e}`);
} finally {
  await browser.close();
  server.close();
}
if (args.json) fs.writeFileSync(args.json, JSON.stringify(report, null, 1));
console.log(failed ? 'web check: FAILED' : 'web check: all passed');
process.exit(failed ? 1 : 0);

// The native demo's CSV (seed 0) against the page's runs: every logged step's lr and losses,
// as f32 (the CSV prints f32 values, the page's JSON their f64 widening). The lr is the
// optimizer's schedule on the device and must be bit-identical; the losses come from the
// demo's own forward pass, whose exp and log WGSL leaves inexact (a few ulps, different on
// each adapter), and training amplifies those differences: they must agree within
// DEMO_LOSS_TOL (relative, default 1e-3; README "In the browser").
function compareDemo(web, csv) {
  const [head, ...lines] = csv.trim().split('\n');
  const cols = head.split(',');
  const native = {};
  for (const line of lines) {
    const v = line.split(',');
    const row = Object.fromEntries(cols.map((c, i) => [c, v[i]]));
    if (row.seed !== '0') continue;
    (native[row.schedule] ??= []).push(row);
  }
  const LOSS_TOL = Number(process.env.DEMO_LOSS_TOL ?? 1e-3);
  const f32 = Math.fround;
  for (const [name, run] of Object.entries(web.runs)) {
    const rows = native[name];
    if (!rows) { fail(`FAIL demo ${name}: not in the native CSV`); continue; }
    if (rows.length !== run.points.length) { fail(`FAIL demo ${name}: ${run.points.length} logged points, native ${rows.length}`); continue; }
    const worst = { lr: 0, train_loss: 0, test_loss: 0, test_accuracy: 0 };
    rows.forEach((row, k) => {
      const p = run.points[k];
      for (const q of Object.keys(worst)) {
        const n = f32(Number(row[q]));
        worst[q] = Math.max(worst[q], Math.abs(f32(p[q]) - n) / Math.max(Math.abs(n), 1e-30));
      }
    });
    const last = rows[rows.length - 1], p = run.points[run.points.length - 1];
    const line = `demo ${name.padEnd(14)} final train loss ${p.train_loss.toFixed(5)} (native ${Number(last.train_loss).toFixed(5)}), held-out ${(100 * p.test_accuracy).toFixed(1)}% (native ${(100 * Number(last.test_accuracy)).toFixed(1)}%); largest relative difference over the logged steps: lr ${worst.lr.toExponential(1)}, train loss ${worst.train_loss.toExponential(1)}, held-out loss ${worst.test_loss.toExponential(1)}`;
    const ok = worst.lr === 0 && worst.train_loss <= LOSS_TOL && worst.test_loss <= LOSS_TOL;
    if (ok) console.log(`PASS ${line}`); else fail(`FAIL ${line}`);
  }
}
