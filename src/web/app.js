// app.js — the dashboard's shell: sign-in, navigation (hash routes), the
// permission-driven menu, the banner.
import { h, clear } from './dom.js';
import { session, signIn, signOut, onSignOut, can, loadPermissions, startEvents, stopEvents,
  onStreamStatus } from './api.js';
import overview from './overview.js';
import models from './models.js';
import chat from './chat.js';
import jobs from './jobs.js';
import keys from './keys.js';

const views = {
  overview: { view: overview, perm: 'status.read', title: 'Overview' },
  models: { view: models, perm: 'models.read', title: 'Models' },
  chat: { view: chat, perm: 'chat', title: 'Chat' },
  jobs: { view: jobs, perm: ['jobs.read', 'events.read'], title: 'Jobs & events' },
  keys: { view: keys, perm: 'permissions.manage', title: 'Keys & roles' },
};

const main = document.getElementById('main');
const banner = document.getElementById('banner');
let current = null;       // {name, cleanup}
let signedIn = false;

function allowed(v) {
  const p = views[v].perm;
  return Array.isArray(p) ? p.some(can) : can(p);
}

export function showBanner(text) {
  banner.textContent = text || '';
  banner.hidden = !text;
}

function renderHeader() {
  for (const a of document.querySelectorAll('#nav a')) a.hidden = !signedIn || !allowed(a.dataset.view);
  const who = document.getElementById('whoami');
  const c = session.caller;
  who.textContent = signedIn && c ? `${c.principal}${c.role ? ' (' + c.role + ')' : ''}` : '';
  document.getElementById('signout').hidden = !session.key;
  document.getElementById('signin-open').hidden = !!session.key || !signedIn;
}

function leave() {
  if (current && current.cleanup) {
    try { current.cleanup(); } catch (e) { console.warn(e); }
  }
  current = null;
}

function route() {
  if (!signedIn) return;
  let name = (location.hash.match(/^#\/(\w+)/) || [])[1];
  if (!views[name] || !allowed(name)) {
    name = Object.keys(views).find(allowed);
    if (!name) { leave(); clear(main, h('p', {}, 'This key may not use any view.')); return; }
    if (location.hash !== '#/' + name) { history.replaceState(null, '', '#/' + name); }
  }
  leave();
  for (const a of document.querySelectorAll('#nav a'))
    if (a.dataset.view === name) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  document.title = views[name].title + ' · Lyra';
  clear(main);
  main.dataset.view = name;
  current = { name, cleanup: views[name].view(main) };
}

function showSignIn(message) {
  leave();
  signedIn = false;
  renderHeader();
  main.dataset.view = 'signin';
  const input = h('input', { id: 'signin-key', type: 'password', autocomplete: 'off', spellcheck: 'false',
    required: true, placeholder: 'lyra_…', 'aria-describedby': 'signin-help' });
  const err = h('p', { id: 'signin-error', class: 'err', role: 'alert' });
  const form = h('form', { id: 'signin-form', class: 'card signin', onsubmit: async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    showBanner('');
    signIn(key);
    const ok = await loadPermissions().catch(() => false);
    if (!ok || !session.key) return; // signOut showed the form again, with the reason
    start();
  } },
  h('h1', {}, 'Sign in'),
  h('label', { for: 'signin-key' }, 'API key', input),
  h('p', { id: 'signin-help', class: 'sub' }, 'The key stays in this browser tab (sessionStorage) and is sent only in the Authorization header.'),
  err,
  h('button', { id: 'signin-submit', class: 'primary', type: 'submit' }, 'Sign in'));
  clear(main, form);
  if (message) showBanner(message);
  input.focus();
}

async function start() {
  signedIn = true;
  renderHeader();
  startEvents();
  route();
  performance.mark('lyra-ready');
}

async function boot() {
  onStreamStatus((live) => {
    const el = document.getElementById('live');
    el.textContent = live ? 'live' : 'offline';
    el.classList.toggle('on', live);
  });
  onSignOut((message) => {
    stopEvents();
    showSignIn(message);
  });
  document.getElementById('signout').addEventListener('click', () => {
    signOut('');
    showBanner('Signed out.');
  });
  document.getElementById('signin-open').addEventListener('click', () => showSignIn(''));
  window.addEventListener('hashchange', route);
  const ok = await loadPermissions();
  if (!ok) { if (document.getElementById('signin-form') === null) showSignIn(''); return; }
  start();
}

boot().catch((e) => { showBanner('The dashboard could not start: ' + e.message); });
