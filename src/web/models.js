// models.js — the models, their state and memory, the load/unload/pin/
// delete controls the caller may use, and model pulls with live progress.
import { h, clear, bytes, secs, state } from './dom.js';
import { get, post, del, can, onEvent } from './api.js';

const pulls = new Map(); // job id → last job object seen

function jobFromEvent(e) {
  const d = e.data || {};
  return { id: d.id, type: d.type, state: d.state, progress: d.progress, error: d.error, result: d.result };
}

export default function models(main) {
  const tbody = h('tbody');
  const msg = h('p', { id: 'models-msg', role: 'status', class: 'sub' });
  const pullList = h('div', { id: 'pull-jobs' });
  let alive = true;

  const source = h('input', { id: 'pull-source', required: true, placeholder: 'https://… or hf://org/repo/file.gguf' });
  const name = h('input', { id: 'pull-name', placeholder: 'optional' });
  const pullForm = can('models.pull') ? h('form', { id: 'pull-form', class: 'row card', onsubmit: async (e) => {
    e.preventDefault();
    const body = { source: source.value.trim() };
    if (name.value.trim()) body.name = name.value.trim();
    try {
      const j = await post('/models/pull', body);
      // The job's events may have come before this answer (a pull that
      // fails at once): they are newer than the queued job answered here.
      const seen = pulls.get(j.job.id);
      pulls.set(j.job.id, seen ? { ...j.job, ...seen, params: j.job.params } : j.job);
      source.value = ''; name.value = '';
      msg.textContent = 'Pull queued: ' + j.job.id;
      renderPulls();
    } catch (err) { msg.textContent = 'Pull refused: ' + err.message; }
  } },
  h('label', { class: 'grow', for: 'pull-source' }, 'Pull a model (URL or hf://)', source),
  h('label', { for: 'pull-name' }, 'Name', name),
  h('button', { id: 'pull-submit', class: 'primary', type: 'submit' }, 'Pull')) : null;

  clear(main, h('h1', {}, 'Models'), pullForm, pullList, msg,
    h('div', { class: 'scroll' }, h('table', { id: 'models-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'State'), h('th', {}, 'Size'), h('th', {}, 'Memory'),
        h('th', {}, 'Details'), h('th', {}, 'Actions'))), tbody)));

  async function act(model, what) {
    const path = '/models/' + encodeURIComponent(model);
    msg.textContent = `${what} ${model}…`;
    try {
      if (what === 'delete') {
        if (!confirm(`Delete the model file of ${model}?`)) { msg.textContent = ''; return; }
        await del(path);
      } else {
        await post(path + '/' + what);
      }
      msg.textContent = `${what} ${model}: done`;
    } catch (e) { msg.textContent = `${what} ${model}: ${e.message}`; }
    refresh();
  }

  function button(model, what, label, cls) {
    return h('button', { type: 'button', class: cls, dataset: { act: what, model }, onclick: () => act(model, what) }, label);
  }

  function render(list) {
    clear(tbody, list.map((m) => {
      const running = m.state === 'loaded' || m.state === 'loading';
      const acts = [];
      if (can('models.load') && m.state !== 'invalid') acts.push(running ? button(m.name, 'unload', 'Unload') : button(m.name, 'load', 'Load', 'primary'));
      if (can('models.pin') && m.state !== 'invalid') acts.push(m.pinned ? button(m.name, 'unpin', 'Unpin') : button(m.name, 'pin', 'Pin'));
      if (can('models.delete')) acts.push(button(m.name, 'delete', 'Delete', 'danger'));
      return h('tr', { dataset: { model: m.name, state: m.state } },
        h('th', { scope: 'row' }, m.name, m.pinned ? ' 📌' : ''),
        h('td', {}, state(m.state)),
        h('td', {}, bytes(m.size_bytes)),
        h('td', {}, m.measured_bytes ? bytes(m.measured_bytes) : h('span', { class: 'muted' }, 'est. ' + bytes(m.estimate_bytes))),
        h('td', { class: 'sub' }, m.error ? h('span', { class: 'err' }, m.error) :
          [m.architecture, m.quantization, m.parameters ? (m.parameters / 1e6).toFixed(1) + ' M params' : null,
            m.context_length ? 'ctx ' + m.context_length : null].filter(Boolean).join(' · ')),
        h('td', {}, h('div', { class: 'acts' }, acts)));
    }));
    if (!list.length) tbody.append(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'no models: put a .gguf file in the models directory or pull one')));
  }

  function renderPulls() {
    clear(pullList, [...pulls.values()].map((j) => {
      const p = j.progress || {};
      const total = p.total || 0, done = p.done || 0;
      const ratio = total ? Math.min(1, done / total) : 0;
      const finished = ['succeeded', 'failed', 'cancelled'].includes(j.state);
      const bar = h('progress', { max: 100, value: j.state === 'succeeded' ? 100 : Math.floor(ratio * 100), 'aria-label': 'pull ' + j.id });
      const text = `${j.state === 'succeeded' ? '100' : Math.floor(ratio * 100)} % · ${bytes(done)} of ${total ? bytes(total) : '?'}` +
        (finished ? '' : ` · ${p.rate ? bytes(p.rate) + '/s' : '–'} · ETA ${secs(p.eta_s)}`);
      return h('div', { class: 'pull-job card', dataset: { job: j.id, state: j.state } },
        h('div', { class: 'row' }, h('strong', {}, (j.params && (j.params.name || j.params.source)) || j.id), state(j.state),
          !finished && can('jobs.cancel') ? h('button', { type: 'button', dataset: { act: 'cancel' }, onclick: async () => {
            try { pulls.set(j.id, await post('/jobs/' + encodeURIComponent(j.id) + '/cancel')); } catch (e) { msg.textContent = 'cancel: ' + e.message; }
            renderPulls();
          } }, 'Cancel') : null,
          finished ? h('button', { type: 'button', dataset: { act: 'dismiss' }, onclick: () => { pulls.delete(j.id); renderPulls(); } }, 'Dismiss') : null),
        bar, h('div', { class: 'sub pull-pct' }, text),
        j.error ? h('div', { class: 'err' }, typeof j.error === 'string' ? j.error : (j.error.message || JSON.stringify(j.error))) : null);
    }));
  }

  async function refresh() {
    try {
      const j = await get('/models');
      if (alive) render(j.models || []);
    } catch (e) { if (alive) msg.textContent = 'models: ' + e.message; }
  }

  let soon = 0;
  const off = onEvent((e) => {
    if (e.type.startsWith('job.') && e.data && (pulls.has(e.data.id) || e.data.type === 'pull')) {
      const prev = pulls.get(e.data.id) || {};
      pulls.set(e.data.id, { ...prev, ...jobFromEvent(e), params: prev.params });
      renderPulls();
      if (e.type === 'job.succeeded') refresh();
    }
    if (/^(model|models|cache)\./.test(e.type)) { clearTimeout(soon); soon = setTimeout(refresh, 50); }
  });

  if (can('jobs.read')) {
    get('/jobs?type=pull&limit=20').then((j) => {
      for (const job of j.jobs || []) if (job.state === 'running' || job.state === 'queued' || pulls.has(job.id)) pulls.set(job.id, job);
      if (alive) renderPulls();
    }, () => {});
  }
  renderPulls();
  refresh();
  return () => { alive = false; off(); clearTimeout(soon); };
}
