// The learning-curve demo, live: each selected schedule trains on the device (the demo
// crate's MLP and wgpu-adamw, compiled to wasm) a few steps at a time, and the page redraws
// the training loss and the lr the device used after each round. Query parameters:
// steps=N, schedules=a,b,c, auto=1 (start at once). When every run is done,
// `window.demoResult` holds each schedule's final logged point (for web/driver/check.mjs).
import init, { demo_schedules, demo_run, adapter_info } from './pkg/wgpu_adamw_web.js';

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b'];
const STEPS_PER_ROUND = 25;
const params = new URLSearchParams(location.search);
let ALL = []; // the default schedules' names, in the order of their colors
const $ = (id) => document.getElementById(id);

function chart(canvas, title, series, { logY = false, xMax = 1 } = {}) {
  const ctx = canvas.getContext('2d');
  const W = canvas.width, H = canvas.height, L = 62, R = 12, T = 26, B = 36;
  ctx.clearRect(0, 0, W, H);
  ctx.font = '12px system-ui, sans-serif';
  ctx.fillStyle = '#222';
  ctx.fillText(title, L, 16);
  const ys = series.flatMap((s) => s.ys).filter((y) => Number.isFinite(y) && (!logY || y > 0));
  if (ys.length === 0) return;
  const f = logY ? Math.log10 : (y) => y;
  let lo = Math.min(...ys.map(f)), hi = Math.max(...ys.map(f));
  if (logY) { lo = Math.floor(lo * 2) / 2; hi = Math.ceil(hi * 2) / 2; } else { lo = Math.min(0, lo); hi *= 1.05; }
  if (hi <= lo) hi = lo + 1;
  const px = (x) => L + (W - L - R) * (x / xMax);
  const py = (y) => T + (H - T - B) * (1 - (f(y) - lo) / (hi - lo));
  ctx.strokeStyle = '#ddd';
  ctx.fillStyle = '#555';
  ctx.lineWidth = 1;
  for (let k = 0; k <= 4; k++) {
    const v = lo + (hi - lo) * k / 4;
    const y = T + (H - T - B) * (1 - k / 4);
    ctx.beginPath(); ctx.moveTo(L, y); ctx.lineTo(W - R, y); ctx.stroke();
    const label = logY ? (10 ** v).toPrecision(2) : v.toPrecision(2);
    ctx.fillText(label, 4, y + 4);
  }
  ctx.textAlign = 'center';
  for (let k = 0; k <= 4; k++) {
    const x = Math.min(px(xMax * k / 4), W - R - 10);
    ctx.fillText(String(Math.round(xMax * k / 4)), x, H - B + 16);
  }
  ctx.fillText('step', W / 2, H - 6);
  ctx.textAlign = 'start';
  series.forEach((s, i) => {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.6;
    ctx.beginPath();
    let started = false;
    s.xs.forEach((x, j) => {
      const y = s.ys[j];
      if (!Number.isFinite(y) || (logY && y <= 0)) return;
      if (started) ctx.lineTo(px(x), py(y)); else { ctx.moveTo(px(x), py(y)); started = true; }
    });
    ctx.stroke();
    ctx.fillStyle = s.color;
    ctx.fillRect(W - R - 130, T + 6 + 15 * i, 10, 10);
    ctx.fillStyle = '#222';
    ctx.fillText(s.name, W - R - 115, T + 15 + 15 * i);
  });
}

function table(runs) {
  const rows = runs.map((r) => {
    const p = r.points[r.points.length - 1];
    return p ? `<tr><td>${r.name}</td><td>${p.step}</td><td>${p.train_loss.toFixed(4)}</td><td>${p.test_loss.toFixed(4)}</td><td>${(100 * p.test_accuracy).toFixed(1)}%</td><td>${p.lr.toExponential(2)}</td></tr>` : '';
  });
  $('table').innerHTML = '<tr><th>schedule</th><th>step</th><th>train loss</th><th>held-out loss</th><th>held-out accuracy</th><th>lr</th></tr>' + rows.join('');
}

async function train() {
  const steps = Number($('steps').value);
  const chosen = [...document.querySelectorAll('#controls input:checked')].map((c) => c.value);
  $('train').disabled = true;
  const t0 = performance.now();
  const runs = [];
  for (const name of chosen) runs.push({ name, run: await demo_run(name, steps), points: [], lr: [] });
  const redraw = () => {
    const colored = runs.map((r) => ({ ...r, color: COLORS[ALL.indexOf(r.name) % COLORS.length] }));
    chart($('loss'), 'training loss (whole training set, log scale)',
      colored.map((r) => ({ name: r.name, color: r.color, xs: r.points.map((p) => p.step), ys: r.points.map((p) => p.train_loss) })),
      { logY: true, xMax: steps });
    chart($('lr'), 'learning rate the device used, every step',
      colored.map((r) => ({ name: r.name, color: r.color, xs: r.lr.map((_, k) => k + 1), ys: r.lr })),
      { xMax: steps });
    table(runs);
  };
  while (runs.some((r) => r.run.done < steps)) {
    for (const r of runs) r.run.advance(STEPS_PER_ROUND);
    for (const r of runs) Object.assign(r, JSON.parse(await r.run.read()));
    $('status').textContent = `step ${runs[0].run.done} of ${steps}, ${((performance.now() - t0) / 1000).toFixed(1)} s`;
    redraw();
    await new Promise((resolve) => requestAnimationFrame(resolve));
  }
  $('status').textContent = `done: ${steps} steps x ${runs.length} schedules in ${((performance.now() - t0) / 1000).toFixed(1)} s`;
  $('train').disabled = false;
  window.demoResult = {
    steps,
    seconds: (performance.now() - t0) / 1000,
    runs: Object.fromEntries(runs.map((r) => [r.name, { final: r.points[r.points.length - 1], points: r.points }])),
  };
}

async function main() {
  await init();
  const info = JSON.parse(await adapter_info());
  if (params.get('steps')) $('steps').value = params.get('steps');
  const names = JSON.parse(demo_schedules(Number($('steps').value)));
  ALL = names;
  const wanted = params.get('schedules') ? params.get('schedules').split(',') : names;
  $('controls').innerHTML = 'schedules: ' + names.map((n, i) =>
    `<label><input type="checkbox" value="${n}" ${wanted.includes(n) ? 'checked' : ''}> <span style="color:${COLORS[i % COLORS.length]}">${n}</span></label>`).join('') +
    `<br><small>adapter: ${info.description}</small>`;
  $('train').onclick = () => train().catch((e) => { $('status').textContent = `error: ${e}`; window.demoResult = { fatal: String(e) }; });
  if (params.get('auto') === '1') $('train').onclick();
}

main().catch((e) => { $('status').textContent = `error: ${e}`; window.demoResult = { fatal: String(e) }; });
