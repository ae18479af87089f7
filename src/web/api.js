// api.js — the daemon's API as the dashboard uses it: the session key
// (sessionStorage, sent only as "Authorization: Bearer", never in a URL),
// the caller's permissions (GET /permissions), and the live event stream
// (GET /events/ws with `since` resume).

const KEY = 'lyra.key';

export const session = {
  key: sessionStorage.getItem(KEY) || '',
  caller: null,      // GET /permissions .caller
  perms: null,       // Set of permission names; null = unknown (a daemon without RBAC): allow
  roles: [],
};

const signOutHandlers = [];
export function onSignOut(f) { signOutHandlers.push(f); }

export function signIn(key) { sessionStorage.setItem(KEY, key); session.key = key; }

export function signOut(message) {
  sessionStorage.removeItem(KEY);
  session.key = '';
  session.caller = null;
  session.perms = new Set();
  for (const f of signOutHandlers) f(message);
}

export function can(p) {
  if (!session.perms) return true;
  return session.perms.has('*') || session.perms.has(p);
}

export class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

const REASONS = {
  missing_key: 'Sign in with an API key.',
  invalid_key: 'That key is not valid.',
  malformed_key: 'That is not a Lyra key (lyra_…).',
  expired_key: 'Your key has expired: you were signed out.',
  revoked_key: 'Your key was revoked: you were signed out.',
};

async function failure(r) {
  let j = null;
  try { j = await r.json(); } catch { /* not JSON */ }
  const e = j && j.error;
  return new ApiError(r.status, e && e.code, (e && e.message) || r.statusText || 'HTTP ' + r.status);
}

// fetch with the key; a 401 signs out with the reason.  opts.raw returns
// the Response (for streams); otherwise the parsed JSON (null when empty).
export async function api(method, path, body, opts = {}) {
  const headers = {};
  if (session.key) headers.Authorization = 'Bearer ' + session.key;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, {
    method, headers, signal: opts.signal, cache: 'no-store', credentials: 'omit',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 401) {
    const e = await failure(r);
    signOut(REASONS[e.code] || e.message);
    throw e;
  }
  if (!r.ok) throw await failure(r);
  if (opts.raw) return r;
  const text = await r.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path, opts) => api('GET', path, undefined, opts);
export const post = (path, body, opts) => api('POST', path, body === undefined ? {} : body, opts);
export const del = (path) => api('DELETE', path);

// Who am I and what may I do.  Returns false when the daemon wants a key.
export async function loadPermissions() {
  // Without a key, ask the public /health first whether the daemon takes
  // anonymous requests: probing /permissions would log a 401 in the console.
  if (!session.key) {
    try {
      const h = await fetch('/health', { headers: { Accept: 'application/json' } }).then((r) => r.json());
      if (h && h.auth_required === true) return false;
    } catch (_) { /* fall through: /permissions says */ }
  }
  try {
    const j = await get('/permissions');
    session.caller = j.caller || null;
    const perms = (j.caller && j.caller.permissions) || [];
    session.perms = new Set(perms);
    session.roles = j.roles || [];
    return true;
  } catch (e) {
    if (e.status === 401) return false;
    // A daemon without RBAC (404/501): every control is shown; the daemon
    // still refuses what the caller may not do.
    session.caller = null;
    session.perms = null;
    return true;
  }
}

// --- the event stream ---------------------------------------------------

const listeners = new Set();
const statusListeners = new Set();
export const events = { recent: [], lastSeq: 0, live: false };
const RECENT_MAX = 500;
let ws = null, retry = 0, retryTimer = 0, wanted = false;

export function onEvent(f) { listeners.add(f); return () => listeners.delete(f); }
export function onStreamStatus(f) { statusListeners.add(f); return () => statusListeners.delete(f); }

function setLive(v) {
  events.live = v;
  for (const f of statusListeners) f(v);
}

function deliver(ev) {
  if (ev.type === 'stream.gap') {
    // This client fell behind: fetch what it missed from resume_from.
    events.lastSeq = Math.min(events.lastSeq, (ev.data && ev.data.resume_from) || events.lastSeq);
    if (ws) ws.close(4000, 'gap');
    return;
  }
  if (ev.seq <= events.lastSeq) return;
  events.lastSeq = ev.seq;
  events.recent.push(ev);
  if (events.recent.length > RECENT_MAX) events.recent.splice(0, events.recent.length - RECENT_MAX);
  for (const f of listeners) {
    try { f(ev); } catch (e) { console.warn('event listener', e); }
  }
}

export async function startEvents() {
  wanted = true;
  if (!events.lastSeq) {
    try {
      const j = await get('/events/recent?limit=200');
      for (const ev of j.events || []) deliver(ev);
      events.lastSeq = Math.max(events.lastSeq, j.last_seq || 0);
    } catch (e) {
      if (e.status === 401 || e.status === 403) return;
    }
  }
  connect();
}

export function stopEvents() {
  wanted = false;
  clearTimeout(retryTimer);
  if (ws) { const w = ws; ws = null; w.close(1000); }
  setLive(false);
}

function connect() {
  if (!wanted || ws) return;
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const url = proto + '//' + location.host + '/events/ws' + (events.lastSeq ? '?since=' + events.lastSeq : '');
  // The key goes as a subprotocol (a browser WebSocket cannot set headers);
  // the daemon answers "lyra-events".
  const sock = session.key ? new WebSocket(url, ['lyra-events', 'lyra.bearer.' + session.key]) : new WebSocket(url);
  ws = sock;
  sock.onopen = () => { retry = 0; setLive(true); };
  sock.onmessage = (m) => {
    let ev;
    try { ev = JSON.parse(m.data); } catch { return; }
    deliver(ev);
  };
  sock.onclose = (c) => {
    if (ws !== sock) return;
    ws = null;
    setLive(false);
    if (c.code === 1008) { stopEvents(); signOut('Your session ended (the key is no longer valid): you were signed out.'); return; }
    if (!wanted) return;
    if (c.code === 4000) { connect(); return; }
    const delay = Math.min(10000, 500 * 2 ** retry++);
    // A handshake refused for a revoked or expired key looks like any
    // failed connection to a page: ask the API, whose 401 signs out.
    const again = () => { retryTimer = setTimeout(connect, delay); };
    get('/').then(again, (e) => { if (e.status !== 401) again(); });
  };
  sock.onerror = () => { /* onclose follows */ };
}
