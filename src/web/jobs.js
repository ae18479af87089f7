// jobs.js — live lists of jobs (GET /jobs, then job.* events) and events
// (the stream's recent events, then live ones), each with filters.
import { h, clear, when, state, bytes } from './dom.js';
import { get, post, can, onEvent, events } from './api.js';

const EVENTS_SHOWN = 200;

function matches(pattern, type) {
  if (!pattern) return true;
  return pattern.split(',').map((p) => p.trim()).filter(Boolean).some((p) =>
    p.endsWith('*') ? type.startsWith(p.slice(0, -1)) : type === p);
}

export default function jobs(main) {
  let alive = true;
  const jobMap = new Map();
  const jobsBody = h('tbody');
  const stateSel = h('select', { id: 'jobs-state' }, ['', 'queued', 'running', 'succeeded', 'failed', 'cancelled'].map((s) =>
    h('option', { value: s }, s || 'any')));
  const typeSel = h('select', { id: 'jobs-type' }, ['', 'pull', 'warmup', 'verify', 'unload'].map((s) => h('option', { value: s }, s || 'any')));
  const evFilter = h('input', { id: 'events-filter', placeholder: 'model.*,job.*' });
  const evList = h('ul', { id: 'events-list', class: 'plain events' });
  const evCount = h('span', { class: 'sub', role: 'status' });

  const sections = [h('h1', {}, 'Jobs & events')];
  if (can('jobs.read')) {
    sections.push(h('h2', {}, 'Jobs'),
      h('div', { class: 'row' }, h('label', { for: 'jobs-state' }, 'State', stateSel), h('label', { for: 'jobs-type' }, 'Type', typeSel)),
      h('div', { class: 'scroll' }, h('table', { id: 'jobs-table' }, h('thead', {}, h('tr', {}, h('th', {}, 'Job'), h('th', {}, 'Type'),
        h('th', {}, 'State'), h('th', {}, 'Progress'), h('th', {}, 'Created'), h('th', {}, ''))), jobsBody)));
  }
  if (can('events.read')) {
    sections.push(h('h2', {}, 'Events'), h('div', { class: 'row' }, h('label', { class: 'grow', for: 'events-filter' }, 'Types (patterns)', evFilter), evCount), evList);
  }
  clear(main, sections);

  function jobRow(j) {
    const p = j.progress || {};
    const prog = p.total ? `${Math.floor((100 * (p.done || 0)) / p.total)} %` + (j.type === 'pull' ? ` (${bytes(p.done)})` : '') : (p.done ?? '');
    const finished = ['succeeded', 'failed', 'cancelled'].includes(j.state);
    return h('tr', { dataset: { job: j.id, state: j.state, type: j.type } },
      h('td', {}, h('code', {}, j.id)), h('td', {}, j.type), h('td', {}, state(j.state),
        j.error ? h('div', { class: 'err sub' }, typeof j.error === 'string' ? j.error : j.error.message || JSON.stringify(j.error)) : null),
      h('td', {}, prog), h('td', { class: 'sub' }, when(j.created_ms)),
      h('td', {}, !finished && can('jobs.cancel') ? h('button', { type: 'button', dataset: { act: 'cancel' }, onclick: async () => {
        try { const r = await post('/jobs/' + encodeURIComponent(j.id) + '/cancel'); jobMap.set(r.id, r); renderJobs(); } catch (e) { alert(e.message); }
      } }, 'Cancel') : null));
  }

  function renderJobs() {
    const list = [...jobMap.values()].filter((j) => (!stateSel.value || j.state === stateSel.value) && (!typeSel.value || j.type === typeSel.value))
      .sort((a, b) => (b.created_ms || 0) - (a.created_ms || 0));
    clear(jobsBody, list.map(jobRow));
    if (!list.length) jobsBody.append(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'no jobs')));
  }

  function evItem(e) {
    return h('li', { dataset: { seq: e.seq, type: e.type } }, h('span', { class: 'type' }, e.type), ' ',
      h('span', { class: 'sub' }, `#${e.seq} ${e.ts || ''} ${e.source || ''}`), ' ', h('code', {}, JSON.stringify(e.data || {}).slice(0, 400)));
  }

  function renderEvents() {
    const list = events.recent.filter((e) => matches(evFilter.value, e.type)).slice(-EVENTS_SHOWN).reverse();
    clear(evList, list.map(evItem));
    evCount.textContent = `${list.length} shown`;
  }

  async function loadJobs() {
    if (!can('jobs.read')) return;
    try {
      const j = await get('/jobs?limit=100');
      if (!alive) return;
      for (const job of j.jobs || []) jobMap.set(job.id, job);
      renderJobs();
    } catch (e) { clear(jobsBody, h('tr', {}, h('td', { colspan: 6, class: 'err' }, e.message))); }
  }

  const off = onEvent((e) => {
    if (e.type.startsWith('job.') && e.data && e.data.id && can('jobs.read')) {
      const prev = jobMap.get(e.data.id) || { id: e.data.id, created_ms: Date.parse(e.ts) || Date.now() };
      jobMap.set(e.data.id, { ...prev, type: e.data.type, state: e.data.state, progress: e.data.progress,
        error: e.data.error ?? prev.error, result: e.data.result ?? prev.result });
      renderJobs();
    }
    if (can('events.read') && matches(evFilter.value, e.type)) {
      evList.prepend(evItem(e));
      while (evList.children.length > EVENTS_SHOWN) evList.lastChild.remove();
      evCount.textContent = `${evList.children.length} shown`;
    }
  });
  stateSel.addEventListener('change', renderJobs);
  typeSel.addEventListener('change', renderJobs);
  evFilter.addEventListener('input', renderEvents);
  loadJobs();
  renderEvents();
  return () => { alive = false; off(); };
}
