// keys.js — for admins (permissions.manage): API keys (list, create — the
// new key shown once —, revoke), users and roles.
import { h, clear, when, state } from './dom.js';
import { get, post, del } from './api.js';

const arr = (j, k) => (Array.isArray(j) ? j : (j && j[k]) || []);

export default function keys(main) {
  let alive = true;
  const msg = h('p', { id: 'keys-msg', role: 'status', class: 'sub' });
  const newKey = h('div', { id: 'new-key', 'aria-live': 'polite' });
  const keysBody = h('tbody'), usersBody = h('tbody'), rolesBody = h('tbody');
  let roles = [], users = [];

  const kRole = h('select', { id: 'key-role' });
  const kPrincipal = h('select', { id: 'key-principal' });
  const kLabel = h('input', { id: 'key-label', placeholder: 'optional' });
  const kExpires = h('input', { id: 'key-expires', placeholder: 'e.g. 30d, 12h (optional)' });
  const uName = h('input', { id: 'user-name', required: true });
  const uRole = h('select', { id: 'user-role' });
  const rName = h('input', { id: 'role-name', required: true });
  const rPerms = h('input', { id: 'role-perms', required: true, placeholder: 'chat, models.read' });
  const rModels = h('input', { id: 'role-models', placeholder: '* (default)' });

  const run = async (what, f) => {
    try { await f(); msg.textContent = what + ': done'; } catch (e) { msg.textContent = what + ': ' + e.message; }
    refresh();
  };

  clear(main, h('h1', {}, 'Keys & roles'), msg,
    h('h2', {}, 'API keys'),
    h('form', { id: 'key-form', class: 'row card', onsubmit: (e) => {
      e.preventDefault();
      run('create key', async () => {
        const body = {};
        if (kPrincipal.value) body.principal = kPrincipal.value; else body.role = kRole.value;
        if (kLabel.value.trim()) body.label = kLabel.value.trim();
        if (kExpires.value.trim()) body.expires_in = kExpires.value.trim();
        const k = await post('/keys', body);
        clear(newKey, h('div', { class: 'newkey' }, h('p', {}, `New key for ${k.principal} — shown only now; copy it:`),
          h('code', { id: 'new-key-text' }, k.key), ' ',
          h('button', { type: 'button', onclick: () => navigator.clipboard && navigator.clipboard.writeText(k.key) }, 'Copy'),
          h('button', { type: 'button', onclick: () => clear(newKey) }, 'Hide')));
        kLabel.value = ''; kExpires.value = '';
      });
    } },
    h('label', { for: 'key-principal' }, 'For user', kPrincipal),
    h('label', { for: 'key-role' }, 'or a new service account with role', kRole),
    h('label', { for: 'key-label' }, 'Label', kLabel),
    h('label', { for: 'key-expires' }, 'Expires in', kExpires),
    h('button', { id: 'key-create', class: 'primary', type: 'submit' }, 'Create key')),
    newKey,
    h('div', { class: 'scroll' }, h('table', { id: 'keys-table' }, h('thead', {}, h('tr', {}, ['Prefix', 'Principal', 'Label', 'State',
      'Created', 'Expires', 'Last used', ''].map((t) => h('th', {}, t)))), keysBody)),
    h('h2', {}, 'Users'),
    h('form', { id: 'user-form', class: 'row card', onsubmit: (e) => {
      e.preventDefault();
      run('add user', () => post('/users', { name: uName.value.trim(), role: uRole.value }).then(() => { uName.value = ''; }));
    } }, h('label', { for: 'user-name' }, 'Name', uName), h('label', { for: 'user-role' }, 'Role', uRole),
    h('button', { type: 'submit' }, 'Add user')),
    h('div', { class: 'scroll' }, h('table', { id: 'users-table' }, h('thead', {}, h('tr', {}, ['Name', 'Kind', 'Role', 'Keys', 'Created', '']
      .map((t) => h('th', {}, t)))), usersBody)),
    h('h2', {}, 'Roles'),
    h('form', { id: 'role-form', class: 'row card', onsubmit: (e) => {
      e.preventDefault();
      const list = (s) => s.split(',').map((x) => x.trim()).filter(Boolean);
      const body = { name: rName.value.trim(), permissions: list(rPerms.value) };
      if (rModels.value.trim()) body.models = list(rModels.value);
      run('create role', () => post('/roles', body).then(() => { rName.value = ''; rPerms.value = ''; rModels.value = ''; }));
    } }, h('label', { for: 'role-name' }, 'Name', rName), h('label', { class: 'grow', for: 'role-perms' }, 'Permissions', rPerms),
    h('label', { for: 'role-models' }, 'Models', rModels), h('button', { type: 'submit' }, 'Create role')),
    h('div', { class: 'scroll' }, h('table', { id: 'roles-table' }, h('thead', {}, h('tr', {}, ['Role', 'Permissions', 'Models', '']
      .map((t) => h('th', {}, t)))), rolesBody)));

  function render(keyList) {
    const roleOpts = () => roles.map((r) => h('option', { value: r.name }, r.name));
    const keepR = kRole.value, keepU = uRole.value, keepP = kPrincipal.value;
    clear(kRole, roleOpts()); clear(uRole, roleOpts());
    clear(kPrincipal, h('option', { value: '' }, '—'), users.map((u) => h('option', { value: u.name }, u.name)));
    if (keepR) kRole.value = keepR; else if (roles.some((r) => r.name === 'user')) kRole.value = 'user';
    if (keepU) uRole.value = keepU; else if (roles.some((r) => r.name === 'user')) uRole.value = 'user';
    kPrincipal.value = keepP;
    clear(keysBody, keyList.map((k) => h('tr', { dataset: { key: k.id, state: k.state } },
      h('td', {}, h('code', {}, k.prefix || k.id)), h('td', {}, k.principal), h('td', {}, k.label || ''), h('td', {}, state(k.state)),
      h('td', { class: 'sub' }, when(k.created_ms)), h('td', { class: 'sub' }, k.expires_ms ? when(k.expires_ms) : 'never'),
      h('td', { class: 'sub' }, when(k.last_used_ms)),
      h('td', {}, k.state === 'active' ? h('button', { type: 'button', class: 'danger', dataset: { act: 'revoke' }, onclick: () => {
        if (confirm(`Revoke key ${k.prefix || k.id} of ${k.principal}?`)) run('revoke key', () => del('/keys/' + encodeURIComponent(k.id)));
      } }, 'Revoke') : null))));
    clear(usersBody, users.map((u) => {
      const sel = h('select', { 'aria-label': 'role of ' + u.name }, roles.map((r) => h('option', { value: r.name, selected: r.name === u.role }, r.name)));
      sel.addEventListener('change', () => run('set role', () => post('/users/' + encodeURIComponent(u.name) + '/role', { role: sel.value })));
      return h('tr', { dataset: { user: u.name } }, h('td', {}, u.name), h('td', {}, u.kind), h('td', {}, sel), h('td', {}, u.keys ?? ''),
        h('td', { class: 'sub' }, when(u.created_ms)),
        h('td', {}, h('button', { type: 'button', class: 'danger', onclick: () => {
          if (confirm(`Remove ${u.name} and revoke their keys?`)) run('remove user', () => del('/users/' + encodeURIComponent(u.name)));
        } }, 'Remove')));
    }));
    clear(rolesBody, roles.map((r) => h('tr', { dataset: { role: r.name } }, h('td', {}, r.name, r.builtin ? h('span', { class: 'sub' }, ' built-in') : ''),
      h('td', { class: 'sub' }, (r.permissions || []).join(', ')), h('td', { class: 'sub' }, (r.models || []).join(', ')),
      h('td', {}, r.builtin ? null : h('button', { type: 'button', class: 'danger', onclick: () => {
        if (confirm(`Delete role ${r.name}?`)) run('delete role', () => del('/roles/' + encodeURIComponent(r.name)));
      } }, 'Delete')))));
  }

  async function refresh() {
    try {
      const [k, u, r] = await Promise.all([get('/keys'), get('/users'), get('/roles')]);
      if (!alive) return;
      users = arr(u, 'users'); roles = arr(r, 'roles');
      render(arr(k, 'keys'));
    } catch (e) { if (alive) msg.textContent = e.message; }
  }
  refresh();
  return () => { alive = false; };
}
