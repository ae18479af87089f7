// Drives Lyra's OpenAI-compatible API with the official `openai` npm client
// (a client nobody here wrote).  Run by tests/integration/it_openai_node.c,
// which starts a real daemon and passes its URL in LYRA_URL and a model
// name in LYRA_MODEL.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const client = new OpenAI({ baseURL: `${process.env.LYRA_URL}/v1`, apiKey: 'not-needed', maxRetries: 0 });
const model = process.env.LYRA_MODEL ?? 'tiny';
const messages = [{ role: 'user', content: 'Say hello.' }];

test('models.list', async () => {
  const page = await client.models.list();
  assert.ok(page.data.some((m) => m.id === model));
});

test('chat.completions.create (not streaming)', async () => {
  const r = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0, ignore_eos: true });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 8);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + 8);
});

test('chat.completions.create (streaming)', async () => {
  const stream = await client.chat.completions.create({
    model, messages, max_tokens: 8, temperature: 0, ignore_eos: true, stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let finish = null;
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.delta?.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.ok(chunks >= 3);
  assert.equal(finish, 'length');
  assert.equal(usage?.completion_tokens, 8);
  // Greedy: the streamed text equals the non-streamed one.
  const r = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0, ignore_eos: true });
  assert.equal(text, r.choices[0].message.content);
});

test('completions.create', async () => {
  const r = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 4, ignore_eos: true });
  assert.equal(r.object, 'text_completion');
  assert.equal(typeof r.choices[0].text, 'string');
});

test('errors come back as APIError with status and code', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'no-such-model', messages }),
    (err) => err instanceof OpenAI.APIError && err.status === 404 && err.code === 'model_not_found',
  );
  await assert.rejects(
    client.chat.completions.create({ model, messages, temperature: -1 }),
    (err) => err instanceof OpenAI.APIError && err.status === 400,
  );
});
