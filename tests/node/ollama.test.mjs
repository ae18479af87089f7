/* ollama.test.mjs — Lyra's Ollama-compatible API driven by the official
 * `ollama` npm client (node --test).  Started by
 * tests/integration/it_ollama_node.c with LYRA_URL (the daemon), LYRA_MODEL
 * (a chat model), LYRA_EMBED_MODEL (one with embeddings on), LYRA_PULL_URL
 * (a GGUF file on a local HTTP server, tests/tools/pull_server.py) and
 * LYRA_PULL_NAME (the model name that pull makes). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Ollama } from 'ollama';

const host = process.env.LYRA_URL;
const model = process.env.LYRA_MODEL ?? 'tiny';
const embedModel = process.env.LYRA_EMBED_MODEL ?? 'embedder';
const pullUrl = process.env.LYRA_PULL_URL;
const pullName = process.env.LYRA_PULL_NAME;
const ollama = new Ollama({ host });

const RFC3339_NANOS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$/;

function checkDone(r) {
  assert.equal(r.done, true);
  assert.ok(['stop', 'length'].includes(r.done_reason), r.done_reason);
  assert.match(r.created_at, RFC3339_NANOS);
  assert.ok(r.prompt_eval_count > 0, 'prompt_eval_count');
  assert.ok(r.eval_count > 0, 'eval_count');
  for (const k of ['total_duration', 'prompt_eval_duration', 'eval_duration'])
    assert.ok(Number.isInteger(r[k]) && r[k] > 0, `${k} = ${r[k]}`);
  assert.ok(Number.isInteger(r.load_duration) && r.load_duration >= 0);
  /* nanoseconds: a whole request takes more than 1000 of them */
  assert.ok(r.total_duration > 1e5, `total_duration ${r.total_duration} is not in ns`);
}

test('version', async () => {
  const v = await ollama.version();
  assert.match(v.version, /^\d+\.\d+\.\d+/);
});

test('tags lists the model with Ollama details', async () => {
  const { models } = await ollama.list();
  const m = models.find((x) => x.name === model);
  assert.ok(m, JSON.stringify(models.map((x) => x.name)));
  assert.equal(m.details.format, 'gguf');
  assert.equal(m.details.family, 'llama');
  assert.ok(m.size > 0);
  assert.match(m.digest, /^[0-9a-f]{64}$/);
});

test('show gives the template, details and metadata', async () => {
  const s = await ollama.show({ model });
  assert.ok(s.template.length > 0);
  assert.equal(s.details.format, 'gguf');
  assert.equal(s.model_info['general.architecture'], 'llama');
  assert.ok(s.capabilities.includes('completion'));
});

test('chat, not streamed', async () => {
  const r = await ollama.chat({
    model,
    messages: [{ role: 'user', content: 'Say hello.' }],
    options: { num_predict: 8, temperature: 0, seed: 1 },
  });
  assert.equal(r.model, model);
  assert.equal(r.message.role, 'assistant');
  assert.ok(r.message.content.length > 0);
  checkDone(r);
  assert.equal(r.eval_count, 8);
  assert.equal(r.done_reason, 'length');
});

test('chat, streamed: several chunks, done last with counts', async () => {
  const stream = await ollama.chat({
    model,
    messages: [{ role: 'user', content: 'Tell me a long story.' }],
    stream: true,
    options: { num_predict: 24 },
  });
  const parts = [];
  let last;
  for await (const part of stream) {
    parts.push(part);
    last = part;
  }
  const withText = parts.filter((p) => !p.done && p.message.content.length > 0);
  assert.ok(withText.length >= 5, `only ${withText.length} text chunks`);
  assert.ok(parts.slice(0, -1).every((p) => p.done === false));
  checkDone(last);
  assert.equal(last.eval_count, 24);
});

test('generate, not streamed and streamed', async () => {
  const r = await ollama.generate({ model, prompt: 'Once upon a time', options: { num_predict: 6 } });
  assert.ok(r.response.length > 0);
  checkDone(r);
  assert.ok(Array.isArray(r.context));

  const stream = await ollama.generate({ model, prompt: 'Once upon a time', stream: true, options: { num_predict: 16 } });
  let n = 0, text = '', last;
  for await (const part of stream) {
    if (!part.done) { n++; text += part.response; }
    last = part;
  }
  assert.ok(n >= 5, `only ${n} chunks`);
  assert.ok(text.length > 0);
  checkDone(last);
  assert.equal(last.eval_count, 16);
});

test('generate with raw prompt, stop and format json', async () => {
  const r = await ollama.generate({
    model, prompt: 'abc', raw: true, format: 'json', options: { num_predict: 4, stop: ['\n\n'], top_k: 20, top_p: 0.9, min_p: 0.05, repeat_penalty: 1.1 },
  });
  checkDone(r);
  const s = await ollama.generate({ model, prompt: 'abc', format: { type: 'object' }, options: { num_predict: 4 } });
  checkDone(s);
});

test('embed and the older embeddings', async () => {
  const e = await ollama.embed({ model: embedModel, input: ['hello', 'world'] });
  assert.equal(e.embeddings.length, 2);
  assert.equal(e.embeddings[0].length, 128); /* the tiny model's width */
  assert.ok(e.prompt_eval_count > 0);
  const old = await ollama.embeddings({ model: embedModel, prompt: 'hello' });
  assert.equal(old.embedding.length, 128);
});

test('ps lists the model after a chat; keep_alive 0 unloads it', async () => {
  await ollama.chat({ model, messages: [{ role: 'user', content: 'hi' }], options: { num_predict: 2 } });
  let { models } = await ollama.ps();
  const m = models.find((x) => x.name === model);
  assert.ok(m, JSON.stringify(models));
  assert.match(m.expires_at, RFC3339_NANOS);
  assert.ok(new Date(m.expires_at) > new Date());
  assert.ok(m.size > 0);

  /* streamed, so the unload happens on the job's own thread */
  const stream = await ollama.chat({ model, messages: [{ role: 'user', content: 'hi' }], stream: true, keep_alive: 0, options: { num_predict: 2 } });
  for await (const part of stream) void part;
  ({ models } = await ollama.ps());
  assert.equal(models.find((x) => x.name === model), undefined, JSON.stringify(models));

  /* not streamed, and with a duration string */
  await ollama.generate({ model, prompt: 'hi', keep_alive: '5m', options: { num_predict: 2 } });
  ({ models } = await ollama.ps());
  assert.ok(models.find((x) => x.name === model));
  await ollama.generate({ model, prompt: 'hi', keep_alive: 0, options: { num_predict: 2 } });
  ({ models } = await ollama.ps());
  assert.equal(models.find((x) => x.name === model), undefined);

  /* an empty prompt loads; with keep_alive 0 it unloads (Ollama's idiom) */
  const load = await ollama.generate({ model, prompt: '' });
  assert.equal(load.done_reason, 'load');
  ({ models } = await ollama.ps());
  assert.ok(models.find((x) => x.name === model));
  const unload = await ollama.generate({ model, prompt: '', keep_alive: 0 });
  assert.equal(unload.done_reason, 'unload');
  ({ models } = await ollama.ps());
  assert.equal(models.find((x) => x.name === model), undefined);
});

test('pull from a URL with progress, then delete', async () => {
  assert.ok(pullUrl, 'LYRA_PULL_URL is set');
  const stream = await ollama.pull({ model: pullUrl, stream: true });
  const events = [];
  for await (const e of stream) events.push(e);
  assert.equal(events[0].status, 'pulling manifest');
  const progress = events.filter((e) => e.status === 'downloading');
  assert.ok(progress.length >= 2, `only ${progress.length} progress events`);
  const lastp = progress[progress.length - 1];
  assert.ok(lastp.total > 0 && lastp.completed <= lastp.total);
  assert.ok(progress.every((e, i) => i === 0 || e.completed >= progress[i - 1].completed));
  assert.equal(events[events.length - 1].status, 'success');

  let { models } = await ollama.list();
  assert.ok(models.find((x) => x.name === pullName), JSON.stringify(models.map((x) => x.name)));
  /* it serves */
  const r = await ollama.generate({ model: pullName, prompt: 'x', options: { num_predict: 2 } });
  checkDone(r);
  /* pulling what is there already is a success at once */
  const again = await ollama.pull({ model: pullUrl, stream: false });
  assert.equal(again.status, 'success');

  const d = await ollama.delete({ model: pullName });
  assert.equal(d.status, 'success');
  ({ models } = await ollama.list());
  assert.equal(models.find((x) => x.name === pullName), undefined);
  await assert.rejects(ollama.delete({ model: pullName }), (e) => e.status_code === 404 && e.error === `model '${pullName}' not found`);
});

test('a pull by Ollama registry name explains URLs', async () => {
  await assert.rejects(ollama.pull({ model: 'llama3.2' }), (e) => e.status_code === 400 && /http\(s\):\/\/ URLs or hf:\/\//.test(e.error));
});

test('unknown model: the client throws with Ollama\'s message', async () => {
  await assert.rejects(
    ollama.chat({ model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }] }),
    (e) => e.name === 'ResponseError' && e.status_code === 404 && e.error === "model 'no-such-model' not found",
  );
  await assert.rejects(ollama.generate({ model: 'no-such-model', prompt: 'x', stream: true }), (e) => e.status_code === 404);
  await assert.rejects(ollama.show({ model: 'no-such-model' }), (e) => e.status_code === 404);
});

test('a bad option type is 400', async () => {
  await assert.rejects(
    ollama.generate({ model, prompt: 'x', options: { temperature: 'hot' } }),
    (e) => e.status_code === 400 && e.error === 'options.temperature: must be a number',
  );
  await assert.rejects(ollama.chat({ model, messages: [{ role: 'user', content: 'x' }], options: { num_predict: 'ten' } }), (e) => e.status_code === 400 && /num_predict/.test(e.error));
  await assert.rejects(ollama.generate({ model, prompt: 'x', keep_alive: 'soon' }), (e) => e.status_code === 400 && /keep_alive/.test(e.error));
  await assert.rejects(ollama.generate({ model, prompt: 'x', options: { top_p: 7 } }), (e) => e.status_code === 400 && /top_p/.test(e.error));
});
