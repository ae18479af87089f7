#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz harnesses into tests/fuzz/corpus/.

Deterministic: run it again and the files come out the same.  Seeds that
come from the generated test models (build/models/{tiny,small}.gguf, see
scripts/models.sh) are only written when the models exist; the committed
corpus has them.  Regression inputs (crash-*, found by fuzzing and fixed)
are committed by hand next to the seeds and never rewritten here.

    tests/fuzz/make_seeds.py            # from the repository root
"""
import json
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")


def write(harness, name, data):
    d = os.path.join(CORPUS, harness)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- GGUF ------------------------------------------------------------------

T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 = range(13)
SCALAR = {T_U8: "<B", T_I8: "<b", T_U16: "<H", T_I16: "<h", T_U32: "<I", T_I32: "<i", T_F32: "<f",
          T_BOOL: "<B", T_U64: "<Q", T_I64: "<q", T_F64: "<d"}
# ggml type: (block size, bytes per block)
GGML = {0: (1, 4), 1: (1, 2), 8: (32, 34), 12: (256, 144), 30: (1, 2)}


def gstr(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack("<Q", len(s)) + s


def gvalue(t, v):
    if t in SCALAR:
        return struct.pack(SCALAR[t], v)
    if t == T_STR:
        return gstr(v)
    et, items = v
    return struct.pack("<IQ", et, len(items)) + b"".join(gvalue(et, x) for x in items)


def gguf(kvs, tensors, version=3, alignment=32, data=True, n_tensors=None):
    """kvs: [(key, type, value)]; tensors: [(name, dims, ggml_type)]."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors, len(kvs))
    for k, t, v in kvs:
        out += gstr(k) + struct.pack("<I", t) + gvalue(t, v)
    offset, sizes = 0, []
    for name, dims, gt in tensors:
        n = 1
        for d in dims:
            n *= d
        blk, size = GGML[gt]
        nbytes = n // blk * size
        out += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", gt, offset)
        sizes.append(nbytes)
        offset += (nbytes + alignment - 1) // alignment * alignment
    if tensors and data:
        out += b"\0" * ((-len(out)) % alignment)
        out += b"\0" * offset
    return out


def read_kvs(path, max_array=8):
    """The key/value pairs and tensor infos of a real GGUF, arrays cut."""
    with open(path, "rb") as f:
        d = f.read(4 << 20)
    _, _, n_t, n_kv = struct.unpack_from("<4sIQQ", d, 0)
    off = 24

    def rd(t, off):
        if t in SCALAR:
            return struct.unpack_from(SCALAR[t], d, off)[0], off + struct.calcsize(SCALAR[t])
        if t == T_STR:
            (n,) = struct.unpack_from("<Q", d, off)
            return d[off + 8:off + 8 + n], off + 8 + n
        et, n = struct.unpack_from("<IQ", d, off)
        off += 12
        items = []
        for i in range(n):
            v, off = rd(et, off)
            if i < max_array:
                items.append(v)
        return (et, items), off

    kvs = []
    for _ in range(n_kv):
        (kl,) = struct.unpack_from("<Q", d, off)
        key = d[off + 8:off + 8 + kl].decode()
        off += 8 + kl
        (t,) = struct.unpack_from("<I", d, off)
        v, off = rd(t, off + 4)
        kvs.append((key, t, v))
    tensors = []
    for _ in range(n_t):
        (nl,) = struct.unpack_from("<Q", d, off)
        name = d[off + 8:off + 8 + nl].decode()
        off += 8 + nl
        (nd,) = struct.unpack_from("<I", d, off)
        dims = list(struct.unpack_from("<%dQ" % nd, d, off + 4))
        off += 4 + 8 * nd
        gt, _ = struct.unpack_from("<IQ", d, off)
        off += 12
        tensors.append((name, dims, gt))
    return kvs, tensors


def gguf_seeds():
    meta = [
        ("general.architecture", T_STR, "llama"),
        ("general.name", T_STR, "seed"),
        ("general.file_type", T_U32, 7),
        ("llama.context_length", T_U32, 2048),
        ("llama.embedding_length", T_U32, 64),
        ("llama.block_count", T_U32, 1),
        ("llama.attention.head_count", T_ARR, (T_U32, [2])),
        ("llama.attention.layer_norm_rms_epsilon", T_F32, 1e-5),
        ("tokenizer.ggml.model", T_STR, "llama"),
        ("tokenizer.ggml.tokens", T_ARR, (T_STR, ["<unk>", "<s>", "</s>", "a", "\u00e9"])),
        ("tokenizer.ggml.scores", T_ARR, (T_F32, [0.0, 0.0, 0.0, -1.0, -2.0])),
        ("tokenizer.chat_template", T_STR, "{% for m in messages %}{{ m.content }}{% endfor %}"),
    ]
    tensors = [("token_embd.weight", [64, 5], 8), ("output_norm.weight", [64], 0)]
    write("gguf", "v3-llama", gguf(meta, tensors))
    write("gguf", "v3-empty", gguf([], []))
    write("gguf", "v3-no-data", gguf(meta, tensors, data=False))
    every_type = [
        ("u8", T_U8, 255), ("i8", T_I8, -1), ("u16", T_U16, 65535), ("i16", T_I16, -2), ("u32", T_U32, 7),
        ("i32", T_I32, -3), ("f32", T_F32, 0.5), ("bool", T_BOOL, 1), ("u64", T_U64, 2**63),
        ("i64", T_I64, -(2**40)), ("f64", T_F64, 1e300), ("bad.utf8", T_STR, b"caf\xc3 \xff"),
        ("nul\0key", T_STR, b"a\0b"), ("empty", T_ARR, (T_I16, [])), ("general.alignment", T_U32, 64),
    ]
    write("gguf", "v2-every-type", gguf(every_type, [("t", [4, 4], 1), ("bf", [8], 30)], version=2, alignment=64))
    # ggml reads no arrays of arrays: refused
    write("gguf", "nested-array", gguf([("nested", T_ARR, (T_ARR, [(T_U8, [1, 2]), (T_STR, ["x"])]))], []))
    write("gguf", "v1-header", b"GGUF" + struct.pack("<IIIII", 1, 0, 0, 0, 0))
    write("gguf", "big-endian", b"GGUF" + struct.pack(">IQQ", 3, 0, 0))
    for name in ("tiny", "small"):
        path = os.path.join(ROOT, "build", "models", name + ".gguf")
        if not os.path.exists(path):
            continue
        with open(path, "rb") as f:
            write("gguf", name + "-head-4k", f.read(4096))
        kvs, tensors = read_kvs(path)
        # The model's own header with 8-element arrays: every tensor info is
        # read, then the data turns out to be missing.
        write("gguf", name + "-meta", gguf(kvs, tensors, data=False)[:16384])
        if name == "tiny":
            # The same with shrunken tensors and their (zero) data: a file
            # that loads completely.
            small = [(n, [256] + [2] * (len(dims) - 1), gt if gt in GGML else 0) for n, dims, gt in tensors]
            write("gguf", name + "-shrunk", gguf(kvs, small))


# ---- frames ----------------------------------------------------------------

def frame(obj_or_text):
    body = obj_or_text if isinstance(obj_or_text, bytes) else \
        (obj_or_text.encode() if isinstance(obj_or_text, str) else json.dumps(obj_or_text).encode())
    return struct.pack(">I", len(body)) + body


def frame_seeds():
    ready = {"type": "ready", "name": "tiny", "load_ms": 154.2, "n_ctx_slot": 2048, "n_slots": 4,
             "threads": 2, "n_batch": 2048, "n_ubatch": 512, "embeddings": False, "kv_unified": False,
             "chat_template": "chatml", "model": {"path": "/m/tiny.gguf", "n_params": 8585856,
                                                  "n_vocab": 32000, "n_ctx_train": 2048}}
    started = {"type": "started", "id": 7, "slot": 0, "prompt_tokens": 29, "cached_tokens": 0}
    token = {"type": "token", "id": 7, "text": "Hel"}
    token2 = {"type": "token", "id": 7, "text": "lo \u00e9\U0001F600"}
    done = {"type": "done", "id": 7, "finish_reason": "stop",
            "usage": {"prompt_tokens": 29, "completion_tokens": 2, "cached_tokens": 0},
            "timings": {"queue_ms": 0.01, "prompt_n": 29, "prompt_ms": 0.9, "predicted_n": 2}}
    # byte 0 picks how the stream is cut into reads
    write("frame", "worker-session", b"\x07" + b"".join(frame(f) for f in (ready, started, token, token2, done)))
    gen = {"type": "generate", "id": 8, "messages": [{"role": "system", "content": "be brief"},
                                                     {"role": "user", "content": "hi"}],
           "params": {"max_tokens": 256, "temperature": 0.8, "stop": ["\n\n"]}, "stream": False}
    write("frame", "daemon-generate", b"\x01" + frame(gen) + frame({"type": "cancel", "id": 8}))
    write("frame", "nul-in-string", b"\x02" + frame('{"type":"token","id":1,"text":"a\\u0000b"}'))
    write("frame", "error-frame", b"\x03" + frame({"type": "error", "id": 9, "code": "invalid_request",
                                                  "message": "params.top_p: must be between 0 and 1, got 7",
                                                  "status": 400}))
    write("frame", "cut-mid-frame", b"\x04" + frame(token) + frame(done)[:20])
    write("frame", "length-over-limit", b"\x05" + frame(token) + struct.pack(">I", 64 * 1024 * 1024 + 1) + b"{}")
    write("frame", "not-json", b"\x06" + frame(token) + frame(b"{\"type\":\"token\",\"text\":\"x\""))
    write("frame", "not-object", b"\x08" + frame(b"[1,2,3]"))
    write("frame", "empty-body", b"\x09" + frame(b""))
    write("frame", "bad-utf8", b"\x0a" + frame(b"{\"text\":\"\xc3\"}"))
    write("frame", "many-small", b"\x0b" + b"".join(frame({"type": "token", "id": i, "text": "x"}) for i in range(40)))


# ---- config ----------------------------------------------------------------

def config_seeds():
    write("config", "v2-full", """schema_version: 2
server:
  host: 127.0.0.1
  port: 8000
  cors_origins: ["http://localhost:3000", "*"]
  allowed_hosts: [lyra.example]
  threads: 0
  max_body_bytes: 8MiB
  max_header_bytes: 16KiB
  idle_timeout_s: 30
  drain_timeout_s: 10
models:
  dir: /srv/models
  default_model: tiny
  max_loaded: 2
  memory_budget: 4GiB
  parallel: 4
  ctx_size: 4096
  load_timeout_s: 120
  entries:
    - name: tiny
      path: tiny.gguf
      aliases: [t, "caf\\u00e9"]
      ctx_size: 2048
      temperature: 0.7
      top_p: 0.9
      top_k: 40
      chat_template: chatml
      pinned: true
    - name: embedder
      path: /abs/e.gguf
      embeddings: yes
watchdog:
  enabled: true
  warn_percent: 85
  critical_percent: 95
auth:
  enabled: false
events:
  ring_size: 1024
  ring_bytes: 16MiB
jobs:
  max_concurrent: 2
log:
  level: debug
  format: json
  file: ~
""")
    write("config", "v1-old", """# schema 1: listen, models.path, max_models, log.json
server:
  listen: "0.0.0.0:9090"
models:
  path: ./models
  max_models: 3
log:
  json: true
""")
    write("config", "v1-ipv6", 'schema_version: 1\nserver:\n  listen: "[::1]:8001"\nlog:\n  json: false\n')
    write("config", "empty", "")
    write("config", "null-doc", "~\n")
    write("config", "flow-style", '{schema_version: 2, server: {port: 0, host: "::1"}, log: {level: WARN}}\n')
    write("config", "quoted-strings", 'schema_version: 2\nmodels:\n  default_model: "a \\"b\\"\\n\\tc"\n'
                                      "  dir: 'it''s here'\nlog:\n  file: \"/var/log/lyra \\x7f.log\"\n")
    write("config", "errors-unknown-key", "schema_version: 2\nserver:\n  prot: 8000\n")
    write("config", "errors-alias", "schema_version: 2\nserver: &s\n  port: 1\nlog: *s\n")
    write("config", "errors-two-docs", "schema_version: 2\n---\nserver: {}\n")
    write("config", "errors-secret", "schema_version: 2\nauth:\n  admin_key: hunter2\n")
    write("config", "errors-newer", "schema_version: 3\n")
    write("config", "block-scalars", "schema_version: 2\nmodels:\n  entries:\n    - name: x\n      path: |\n"
                                     "        multi\n        line\n      chat_template: >-\n        folded\n"
                                     "        text\n")


# ---- request bodies --------------------------------------------------------

def request_seeds():
    bodies = {
        "openai-chat": {"model": "tiny", "messages": [{"role": "system", "content": "You are terse."},
                                                      {"role": "user", "content": "Hi"}],
                        "max_tokens": 8, "temperature": 0, "ignore_eos": True},
        "openai-chat-stream": {"model": "tiny", "stream": True, "stream_options": {"include_usage": True},
                               "messages": [{"role": "developer", "content": "d"},
                                            {"role": "user", "content": [{"type": "text", "text": "a"},
                                                                         {"type": "text", "text": "b"}]},
                                            {"role": "assistant", "content": None}],
                               "max_completion_tokens": 1000000000, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
                               "seed": 42, "stop": ["\n", "User:"], "presence_penalty": 0.5,
                               "frequency_penalty": 0.5, "repeat_penalty": 1.1, "repeat_last_n": 64, "n": 1,
                               "response_format": {"type": "json_object"}, "user": "u", "logprobs": False,
                               "tools": []},
        "openai-chat-poison-role": {"model": "tiny", "messages": [
            {"role": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\u00e9", "content": "hi"}]},
        "openai-chat-tool": {"messages": [{"role": "tool", "content": "42", "tool_call_id": "c"}],
                             "tools": [{"type": "function", "function": {"name": "f"}}]},
        "openai-chat-image": {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
        "openai-chat-grammar": {"messages": [{"role": "user", "content": "x"}],
                                "grammar": "root ::= \"yes\" | \"no\"", "response_format": {"type": "text"}},
        "openai-completions": {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 4,
                               "ignore_eos": True, "echo": False, "suffix": None, "best_of": 1, "logprobs": None},
        "openai-completions-array": {"prompt": ["Once"], "stream": True},
        "openai-embeddings": {"model": "embedder", "input": ["hello", "world"], "encoding_format": "float"},
        "chat": {"message": "Hello!", "conversation_id": "9b2f0000-0000-4000-8000-000000000000", "model": "tiny",
                 "stream": False, "options": {"max_tokens": 256, "temperature": 0.8, "top_p": 0.95, "top_k": 40,
                                              "min_p": 0.05, "seed": 42, "stop": ["\n\n"],
                                              "repeat_penalty": 1.1, "ignore_eos": False}},
        "chat-bad-option": {"message": "hi", "options": {"temprature": 1, "json_mode": True}},
    }
    for name, body in bodies.items():
        write("requests", name, json.dumps(body, ensure_ascii=False))


if __name__ == "__main__":
    gguf_seeds()
    frame_seeds()
    config_seeds()
    request_seeds()
