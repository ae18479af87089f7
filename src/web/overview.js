// overview.js — live figures from GET /status (every 2 s while the page is
// visible, and at once after an event that changes them) and the event
// stream; small charts of the last minutes.
import { h, clear, bytes, pct, secs, sparkline, state } from './dom.js';
import { get, onEvent, events } from './api.js';

const KEEP = 150; // samples (5 minutes at one per 2 s)
const hist = { cpu: [], sys: [], mem: [], daemon: [], workers: [], gpu: [], hit: [] };
let lastStatus = null;

function push(name, v) {
  const a = hist[name];
  a.push(Number.isFinite(v) ? v : 0);
  if (a.length > KEEP) a.shift();
}

function record(s) {
  const cpu = s.cpu || {}, m = s.memory || {}, c = s.cache || {};
  push('cpu', cpu.process_percent ?? s.process?.cpu_percent);
  push('sys', cpu.system_percent);
  push('mem', m.used_percent);
  push('daemon', m.daemon_bytes ?? s.process?.rss_bytes);
  push('workers', m.workers_bytes);
  const g = (s.gpu || [])[0];
  push('gpu', g ? g.utilization_percent : 0);
  push('hit', (c.hit_ratio ?? 0) * 100);
}

export default function overview(main) {
  const els = {};
  const card = (id, title) => {
    els[id] = { value: h('div', { class: 'big', id: 'ov-' + id }, '–'), sub: h('div', { class: 'sub' }),
      canvas: h('canvas', { class: 'spark', 'aria-hidden': 'true' }) };
    return h('section', { class: 'card', 'aria-labelledby': 'ov-h-' + id },
      h('h2', { id: 'ov-h-' + id }, title), els[id].value, els[id].sub, els[id].canvas);
  };
  const warnings = h('ul', { id: 'ov-warnings', class: 'warn-list' });
  const workers = h('tbody');
  const recent = h('ul', { id: 'ov-events', class: 'plain events', 'aria-live': 'polite' });
  const gpus = h('div', { id: 'ov-gpu', class: 'sub' });
  clear(main,
    h('h1', {}, 'Overview'),
    h('div', { class: 'grid' }, card('cpu', 'CPU'), card('memory', 'Memory'), card('cache', 'Model cache'),
      card('gpu', 'GPU')),
    h('div', { class: 'grid' },
      h('section', { class: 'card' }, h('h2', {}, 'Warnings'), warnings),
      h('section', { class: 'card' }, h('h2', {}, 'Fallbacks'), h('div', { id: 'ov-fallbacks', class: 'sub' }, '–')),
      h('section', { class: 'card' }, h('h2', {}, 'GPUs'), gpus)),
    h('h2', {}, 'Workers'),
    h('div', { class: 'scroll' }, h('table', { id: 'ov-workers' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Model'), h('th', {}, 'State'), h('th', {}, 'PID'),
        h('th', {}, 'Memory (RSS)'), h('th', {}, 'In flight'), h('th', {}, 'Idle'))), workers)),
    h('h2', {}, 'Recent events'), recent);

  function render(s) {
    const cpu = s.cpu || {}, m = s.memory || {}, c = s.cache || {};
    els.cpu.value.textContent = pct(cpu.process_percent ?? s.process?.cpu_percent);
    els.cpu.sub.textContent = `daemon · system ${pct(cpu.system_percent)} of ${cpu.cpus ?? m.cpus ?? '?'} CPUs`;
    sparkline(els.cpu.canvas, [hist.cpu, hist.sys], 100);
    els.memory.value.textContent = pct(m.used_percent);
    const cg = m.cgroup ? ` · cgroup ${bytes(m.cgroup.current_bytes)} of ${m.cgroup.max_bytes ? bytes(m.cgroup.max_bytes) : '∞'}` : '';
    els.memory.sub.textContent = `system ${bytes(m.used_bytes)} of ${bytes(m.limit_bytes ?? m.total_bytes)} · daemon ${bytes(m.daemon_bytes ?? s.process?.rss_bytes)} · workers ${bytes(m.workers_bytes)}${cg} · ${m.watchdog || ''}`;
    sparkline(els.memory.canvas, [hist.mem], 100);
    const ev = c.evictions || {};
    const evTotal = Object.values(ev).reduce((a, b) => a + (b || 0), 0);
    els.cache.value.textContent = c.hit_ratio === undefined || c.hit_ratio === null ? '–' : pct(c.hit_ratio * 100);
    els.cache.sub.textContent = `hit ratio · ${c.hits ?? 0} hits, ${c.misses ?? 0} misses · ${evTotal} evictions` +
      (evTotal ? ' (' + Object.entries(ev).filter(([, v]) => v).map(([k, v]) => k + ' ' + v).join(', ') + ')' : '') +
      ` · held ${bytes(c.held_bytes)} of ${bytes(c.budget_bytes)}`;
    sparkline(els.cache.canvas, [hist.hit], 100);
    const g = s.gpu || [];
    els.gpu.value.textContent = g.length ? pct(g[0].utilization_percent) : 'none';
    els.gpu.sub.textContent = g.length ? `${g[0].name || g[0].description || 'GPU 0'} · ${bytes(g[0].memory_total - g[0].memory_free)} of ${bytes(g[0].memory_total)} used` : 'no GPU detected';
    sparkline(els.gpu.canvas, [hist.gpu], 100);
    clear(gpus, g.length ? g.map((d) => h('div', {}, `#${d.index} ${d.name || ''}: ${bytes(d.memory_free)} free, ${d.temperature_c ?? '–'} °C`)) : 'none');
    const w = s.warnings || [];
    clear(warnings, w.length ? w.map((x) => h('li', { dataset: { code: x.code } }, h('strong', {}, x.code), ': ', x.message || '')) :
      h('li', { class: 'muted' }, 'none'));
    const f = s.fallbacks || {};
    document.getElementById('ov-fallbacks').textContent =
      `${f.count ?? 0} requests served by a fallback model · ${f.gpu ?? 0} GPU fallbacks` +
      (f.last ? ' · last: ' + (typeof f.last === 'string' ? f.last : JSON.stringify(f.last)) : '');
    clear(workers, (s.models || []).map((x) => h('tr', {}, h('td', {}, x.name), h('td', {}, state(x.state)),
      h('td', {}, x.pid ?? '–'), h('td', {}, bytes(x.rss_bytes)), h('td', {}, x.in_flight ?? 0), h('td', {}, secs(x.idle_s)))));
    if (!(s.models || []).length) workers.append(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'no worker running')));
  }

  function renderEvents() {
    const last = events.recent.slice(-8).reverse();
    clear(recent, last.map((e) => h('li', { dataset: { seq: e.seq, type: e.type } },
      h('span', { class: 'type' }, e.type), ' ', h('code', {}, JSON.stringify(e.data || {}).slice(0, 160)))));
    if (!last.length) recent.append(h('li', { class: 'muted' }, 'no events yet'));
  }

  let timer = 0, soon = 0, alive = true;
  async function refresh() {
    clearTimeout(timer);
    if (!alive) return;
    if (!document.hidden) {
      try {
        const s = await get('/status');
        if (!alive) return;
        lastStatus = s;
        record(s);
        render(s);
      } catch (e) {
        if (!alive) return;
        els.cpu.sub.textContent = 'status unavailable: ' + e.message;
      }
    }
    timer = setTimeout(refresh, 2000);
  }
  const off = onEvent((e) => {
    renderEvents();
    if (/^(model|models|cache|memory|worker)\./.test(e.type)) {
      clearTimeout(soon);
      soon = setTimeout(refresh, 50);
    }
  });
  const vis = () => { if (!document.hidden) refresh(); };
  document.addEventListener('visibilitychange', vis);
  if (lastStatus) render(lastStatus);
  renderEvents();
  refresh();
  return () => { alive = false; clearTimeout(timer); clearTimeout(soon); off(); document.removeEventListener('visibilitychange', vis); };
}
