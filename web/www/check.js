// Drives the check: every trace in traces/index.json, then the quick benchmark. The result
// is left in `window.checkResult` for web/driver/check.mjs (and shown on the page).
import init, { adapter_info, replay_trace, bench_quick, step_async_check } from './pkg/wgpu_adamw_web.js';

const out = document.getElementById('out');
const fixed = (x, d = 3) => (typeof x === 'number' ? x.toFixed(d) : String(x));
const log = (line, fail = false) => {
  const span = document.createElement('span');
  if (fail) span.className = 'fail';
  span.textContent = line + '\n';
  out.appendChild(span);
};

async function main() {
  await init();
  const params = new URLSearchParams(location.search);
  const adapter = JSON.parse(await adapter_info());
  log(`adapter: ${adapter.description}; ${adapter.max_storage_buffers_per_shader_stage} storage buffers per stage`);
  const only = params.get('only') || '';
  const names = (await (await fetch('traces/index.json')).json()).filter((n) => n.includes(only));
  const traces = [];
  for (const name of names) {
    const bytes = new Uint8Array(await (await fetch(`traces/${name}`)).arrayBuffer());
    let r;
    try {
      r = JSON.parse(await replay_trace(name, bytes));
    } catch (e) {
      r = { name, passed: false, error: String(e) };
    }
    traces.push(r);
    log(r.error
      ? `FAIL ${name}: ${r.error}`
      : `${r.passed ? 'PASS' : 'FAIL'} ${name}: worst ${fixed(r.worst_ratio)} of tolerance (${r.worst_kind} at ${r.worst_at}), ${fixed(r.ms, 0)} ms`,
    !r.passed);
  }
  let stepAsync;
  try {
    stepAsync = JSON.parse(await step_async_check());
  } catch (e) {
    stepAsync = { passed: false, error: String(e) };
  }
  log(`${stepAsync.passed ? 'PASS' : 'FAIL'} step_async: ${JSON.stringify(stepAsync)}`, !stepAsync.passed);
  let bench = null;
  if (params.get('bench') !== '0') {
    log('quick benchmark ...');
    bench = JSON.parse(await bench_quick(Number(params.get('bench_steps') || 5), params.get('bench_filter') || ''));
    for (const b of bench.rows) {
      log(`${b.workload}: fused ${b.fused_ms.toFixed(2)} ms (${b.fused_gbps.toFixed(2)} GB/s), copy ${b.copy_ms.toFixed(2)} ms (${b.copy_gbps.toFixed(2)} GB/s), fused/copy ${b.fused_vs_copy.toFixed(2)}`);
    }
  }
  window.checkResult = { adapter, traces, stepAsync, bench };
  log('done');
}

main().catch((e) => {
  log(`fatal: ${e}`, true);
  window.checkResult = { fatal: String(e) };
});
