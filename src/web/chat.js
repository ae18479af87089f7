// chat.js — POST /chat with stream:true read through fetch and a
// ReadableStream (Server-Sent Events), the conversation list, and Stop,
// which aborts the fetch: the daemon cancels the generation when the
// client goes.
import { h, clear } from './dom.js';
import { api, get, can } from './api.js';

let conversationId = null;
let modelChoice = '';

export default function chat(main) {
  const select = h('select', { id: 'chat-model' });
  const convList = h('div', { id: 'chat-convs', class: 'convs' });
  const log = h('div', { id: 'chat-log', class: 'card', 'aria-live': 'polite', 'aria-busy': 'false', role: 'log',
    'aria-label': 'Conversation' });
  const input = h('textarea', { id: 'chat-input', rows: 3, placeholder: 'Message…' });
  const send = h('button', { id: 'chat-send', class: 'primary', type: 'submit' }, 'Send');
  const stop = h('button', { id: 'chat-stop', type: 'button', disabled: true }, 'Stop');
  const status = h('p', { id: 'chat-status', class: 'sub', role: 'status' });
  let controller = null, alive = true;

  const form = h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); submit(); } },
    h('label', { class: 'grow', for: 'chat-input' }, 'Message', input), send, stop);
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
  });
  stop.addEventListener('click', () => { if (controller) controller.abort(); });
  select.addEventListener('change', () => { modelChoice = select.value; });

  clear(main, h('h1', {}, 'Chat'),
    h('div', { class: 'chat' },
      h('section', { class: 'card', 'aria-label': 'Conversations' },
        h('div', { class: 'row' }, h('button', { type: 'button', id: 'chat-new', onclick: () => { conversationId = null; clear(log); markCurrent(); input.focus(); } }, 'New chat')),
        convList),
      h('section', {},
        h('div', { class: 'row' }, h('label', { for: 'chat-model' }, 'Model', select)),
        log, form, status)));

  function bubble(role, text) {
    const el = h('div', { class: 'msg ' + role }, text || '');
    log.append(el);
    log.scrollTop = log.scrollHeight;
    return el;
  }

  function markCurrent() {
    for (const b of convList.querySelectorAll('.conv'))
      b.setAttribute('aria-current', b.dataset.id === conversationId ? 'true' : 'false');
  }

  async function loadConversations() {
    if (!can('conversations.read')) return;
    try {
      const j = await get('/conversations?limit=50');
      if (!alive) return;
      clear(convList, (j.conversations || []).map((c) => h('button', { type: 'button', class: 'conv', dataset: { id: c.id },
        title: c.title || c.id, onclick: () => open(c.id) }, c.title || '(untitled)')));
      if (!(j.conversations || []).length) convList.append(h('p', { class: 'sub' }, 'no conversations yet'));
      markCurrent();
    } catch (e) { clear(convList, h('p', { class: 'err' }, e.message)); }
  }

  async function open(id) {
    try {
      const c = await get('/conversations/' + encodeURIComponent(id));
      conversationId = c.id;
      clear(log);
      for (const m of c.messages || []) bubble(m.role === 'user' ? 'user' : 'assistant', m.content);
      if (c.model && [...select.options].some((o) => o.value === c.model)) { select.value = c.model; modelChoice = c.model; }
      markCurrent();
    } catch (e) { status.textContent = e.message; }
  }

  async function loadModels() {
    try {
      const j = await get('/models');
      if (!alive) return;
      const names = (j.models || []).filter((m) => m.valid !== false && m.state !== 'invalid').map((m) => m.name);
      clear(select, names.map((n) => h('option', { value: n }, n)));
      if (names.includes(modelChoice)) select.value = modelChoice;
      else if (names.length) modelChoice = names[0];
      if (!names.length) select.append(h('option', { value: '' }, 'no model'));
    } catch (e) { status.textContent = e.message; }
  }

  async function submit() {
    const text = input.value.trim();
    if (!text || controller) return;
    input.value = '';
    bubble('user', text);
    const out = bubble('assistant', '');
    out.classList.add('streaming');
    controller = new AbortController();
    send.disabled = true; stop.disabled = false;
    log.setAttribute('aria-busy', 'true');
    status.textContent = 'generating…';
    const body = { message: text, stream: true };
    if (conversationId) body.conversation_id = conversationId;
    if (select.value) body.model = select.value;
    let finish = '';
    try {
      const r = await api('POST', '/chat', body, { raw: true, signal: controller.signal });
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
          if (!data || data === '[DONE]') continue;
          let chunk;
          try { chunk = JSON.parse(data); } catch { continue; }
          if (chunk.conversation_id) conversationId = chunk.conversation_id;
          if (chunk.delta) { out.textContent += chunk.delta; log.scrollTop = log.scrollHeight; }
          if (chunk.error) { out.append(h('div', { class: 'err' }, chunk.error.message || chunk.error.code)); }
          if (chunk.done) finish = chunk.finish_reason || 'stop';
        }
      }
      status.textContent = finish ? 'finished: ' + finish : 'stream ended';
    } catch (e) {
      if (e.name === 'AbortError') status.textContent = 'stopped';
      else { out.append(h('div', { class: 'err' }, e.message)); status.textContent = 'failed'; }
    } finally {
      out.classList.remove('streaming');
      controller = null;
      send.disabled = false; stop.disabled = true;
      log.setAttribute('aria-busy', 'false');
      if (alive) loadConversations();
    }
  }

  loadModels().then(() => { if (conversationId) open(conversationId); });
  loadConversations();
  input.focus();
  return () => { alive = false; if (controller) controller.abort(); };
}
