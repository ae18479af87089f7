// dom.js — small helpers: element creation without innerHTML (no markup
// from data ever reaches the parser), formatting.

// h('button', {class: 'x', onclick: f, dataset: {act: 'load'}}, 'Load')
export function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'class') el.className = v;
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  append(el, kids);
  return el;
}

function append(el, kids) {
  for (const k of kids.flat(Infinity)) {
    if (k === undefined || k === null || k === false) continue;
    el.append(k instanceof Node ? k : String(k));
  }
}

export function clear(el, ...kids) { el.replaceChildren(); append(el, kids); return el; }

export function bytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(n < 10 ? 2 : 1) : n) + ' ' + u[i];
}

export function pct(x) { return x === null || x === undefined || !Number.isFinite(x) ? '–' : x.toFixed(1) + ' %'; }

export function secs(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return '–';
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min ' + Math.round(s % 60) + ' s';
  return Math.floor(s / 3600) + ' h ' + Math.round((s % 3600) / 60) + ' min';
}

export function when(ms) {
  if (!ms) return '–';
  const d = new Date(ms);
  return Number.isNaN(d.getTime()) ? String(ms) : d.toLocaleString();
}

export function state(s) { return h('span', {class: 'state ' + (s || '')}, s || '–'); }

// A canvas line chart of the last samples (values in [0, max]).
export function sparkline(canvas, series, max) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, ht = canvas.clientHeight;
  if (!w || !ht) return;
  if (canvas.width !== Math.round(w * dpr)) { canvas.width = Math.round(w * dpr); canvas.height = Math.round(ht * dpr); }
  const g = canvas.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, ht);
  const style = getComputedStyle(document.documentElement);
  g.strokeStyle = style.getPropertyValue('--line');
  g.strokeRect(0.5, 0.5, w - 1, ht - 1);
  const colors = [style.getPropertyValue('--accent'), style.getPropertyValue('--warn'), style.getPropertyValue('--ok')];
  series.forEach((pts, si) => {
    if (pts.length < 2) return;
    const top = max || Math.max(1, ...series.flat());
    g.strokeStyle = colors[si % colors.length];
    g.lineWidth = 1.5;
    g.beginPath();
    pts.forEach((v, i) => {
      const x = (i / (pts.length - 1)) * (w - 2) + 1;
      const y = ht - 2 - (Math.min(v, top) / top) * (ht - 4);
      if (i) g.lineTo(x, y); else g.moveTo(x, y);
    });
    g.stroke();
  });
}
