#!/usr/bin/env bash
# Trains Lyra's demo model from scratch (docs/demo-model.md): the King James
# Bible from Debian's bible-kjv-text, a 2,000-piece SentencePiece vocabulary,
# a small llama-architecture model trained by build/lyra-train on ggml-opt
# (AdamW), exported to GGUF and quantized to q8_0.
#
#   scripts/demo-model.sh [BUILD_DIR]        (make demo-model [INSTALL=1])
#
# Writes build/demo/ (demo.gguf, demo.manifest.json, demo.words.txt,
# demo-f32.gguf, the tokenizer, the texts, train.log); with INSTALL=1 also
# copies demo.gguf, its manifest and the word list over models/.  Training uses the CPU, or the GPU when deps/
# was built with CUDA=1 (ggml picks the GPU backend by itself).  Same inputs,
# recipe and THREADS give the same data order and, on the CPU, the same file.
#
# Recipe overrides, for quick trials only (the committed model uses the
# defaults): STEPS EVAL_EVERY WARMUP DIM LAYERS HEADS KV_HEADS FFN CTX BATCH LR
# LR_MIN WD SEED THREADS VOCAB VAL_SEQS OUT.
set -euo pipefail
build=${1:-build}
out=${OUT:-build/demo}
train_bin=$build/lyra-train

# The recipe.  Changing it changes the committed model: retrain, INSTALL=1,
# and commit models/ with the new manifest.
DIM=${DIM:-192} LAYERS=${LAYERS:-4} HEADS=${HEADS:-6} KV_HEADS=${KV_HEADS:-2} FFN=${FFN:-512}
CTX=${CTX:-128} BATCH=${BATCH:-16} STEPS=${STEPS:-1500} WARMUP=${WARMUP:-150}
EVAL_EVERY=${EVAL_EVERY:-150} VAL_SEQS=${VAL_SEQS:-0}
LR=${LR:-3e-3} LR_MIN=${LR_MIN:-3e-4} WD=${WD:-0.1} BETA1=0.9 BETA2=0.99
SEED=${SEED:-42} THREADS=${THREADS:-2} VOCAB=${VOCAB:-2000} VAL_EVERY=50

fail() { echo "demo-model: $*" >&2; exit 1; }
[ -f /usr/lib/bible.data ] ||
    fail "no King James Bible text: install the Debian package bible-kjv-text (apt-get install bible-kjv-text bible-kjv)"
command -v bible >/dev/null ||
    fail "no 'bible' reader for the bible-kjv-text data: install the Debian package bible-kjv (apt-get install bible-kjv)"
command -v spm_train >/dev/null && command -v spm_encode >/dev/null ||
    fail "no spm_train: install the Debian package sentencepiece (apt-get install sentencepiece)"
command -v jq >/dev/null || fail "no jq: install the Debian package jq (apt-get install jq)"
[ -x "$train_bin" ] || fail "$train_bin is missing: make build first"

mkdir -p "$out"
t_start=$(date +%s)

# 1. The text: the whole Bible as the bible-kjv reader prints it (unwrapped),
#    then verses only, every 50th chapter held out for validation.
bible -l 100000 'Gen1:1-Rev22:21' > "$out/kjv.txt"
"$train_bin" prep --in "$out/kjv.txt" --train "$out/train.txt" --val "$out/val.txt" --val-every $VAL_EVERY
# Every distinct word of the training text, lower-cased: what the test
# it_demo_model checks the model's output against.
tr -cs 'A-Za-z' '\n' < "$out/train.txt" | tr 'A-Z' 'a-z' | sed '/^$/d' | LC_ALL=C sort -u > "$out/demo.words.txt"

# 2. The tokenizer: BPE (llama.cpp's SPM tokenizer merges by score, which is
#    SentencePiece BPE), byte fallback, no normalization (llama.cpp applies
#    none), digits split, <unk> <s> </s> = 0 1 2.  Deterministic: no sampling
#    or shuffling of the input sentences.
spm_opts=(--vocab_size=$VOCAB --model_type=bpe --character_coverage=1.0 --byte_fallback=true
    --split_digits=true --normalization_rule_name=identity --unk_id=0 --bos_id=1 --eos_id=2
    --pad_id=-1 --input_sentence_size=0 --shuffle_input_sentence=false --num_threads=$THREADS)
spm_train --input="$out/train.txt" --model_prefix="$out/spm" "${spm_opts[@]}" --minloglevel=1 \
    > "$out/spm_train.log" 2>&1 || { cat "$out/spm_train.log" >&2; fail "spm_train failed"; }

# 3. Training, F32 export (the checkpoint), q8_0.
recipe=(--dim $DIM --layers $LAYERS --heads $HEADS --kv-heads $KV_HEADS --ffn $FFN --ctx $CTX
    --batch $BATCH --steps $STEPS --warmup $WARMUP --eval-every $EVAL_EVERY --val-seqs $VAL_SEQS
    --lr $LR --lr-min $LR_MIN --wd $WD --beta1 $BETA1 --beta2 $BETA2 --seed $SEED --threads $THREADS)
"$train_bin" train --train "$out/train.txt" --val "$out/val.txt" --spm "$out/spm" \
    --out "$out/demo-f32.gguf" --curve "$out/curve.json" --name demo "${recipe[@]}" 2>&1 |
    tee "$out/train.log"
"$train_bin" quantize --in "$out/demo-f32.gguf" --out "$out/demo.gguf" --threads $THREADS \
    > "$out/quantize.log" 2>&1 || { cat "$out/quantize.log" >&2; fail "quantize failed"; }

# 4. The q8_0 file through stock libllama: same tokens as spm_encode, and
#    its validation loss.
q8_val=$("$train_bin" score --model "$out/demo.gguf" --val "$out/val.txt" --spm "$out/spm" \
    --ctx $CTX --seqs $(( $(jq .val_tokens_scored "$out/curve.json") / CTX )) --threads $THREADS \
    2> "$out/score.log") || { cat "$out/score.log" >&2; fail "score failed"; }
t_end=$(date +%s)

# 5. The manifest.
text_sha=$(sha256sum "$out/kjv.txt" | cut -d' ' -f1)
data_sha=$(sha256sum /usr/lib/bible.data | cut -d' ' -f1)
gguf_sha=$(sha256sum "$out/demo.gguf" | cut -d' ' -f1)
gguf_size=$(stat -c %s "$out/demo.gguf")
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
backend=$(jq -r .backend "$out/curve.json")
jq -n --slurpfile curve "$out/curve.json" \
    --arg text_sha "$text_sha" --arg data_sha "$data_sha" --arg gguf_sha "$gguf_sha" \
    --argjson gguf_size "$gguf_size" --argjson q8_val "$q8_val" \
    --arg kjv_ver "$(dpkg-query -W -f='${Version}' bible-kjv-text)" \
    --arg reader_ver "$(dpkg-query -W -f='${Version}' bible-kjv)" \
    --arg spm_ver "$(dpkg-query -W -f='${Version}' sentencepiece)" \
    --arg spm_opts "${spm_opts[*]}" --arg cpu "$cpu" --arg backend "$backend" \
    --argjson nproc "$(nproc)" --argjson wall $((t_end - t_start)) \
    --argjson dim $DIM --argjson layers $LAYERS --argjson heads $HEADS --argjson kv_heads $KV_HEADS \
    --argjson ffn $FFN --argjson ctx $CTX --argjson batch $BATCH --argjson steps $STEPS \
    --argjson warmup $WARMUP --argjson eval_every $EVAL_EVERY --argjson lr $LR --argjson lr_min $LR_MIN \
    --argjson wd $WD --argjson beta1 $BETA1 --argjson beta2 $BETA2 --argjson seed $SEED \
    --argjson threads $THREADS --argjson vocab $VOCAB --argjson val_every $VAL_EVERY '
    $curve[0] as $c | {
      name: "demo",
      file: "demo.gguf",
      sha256: $gguf_sha,
      size: $gguf_size,
      type: "q8_0",
      architecture: "llama",
      data: {
        source: "King James Bible (1611), public domain",
        package: "bible-kjv-text", version: $kjv_ver, data_sha256: $data_sha,
        reader: "bible -l 100000 Gen1:1-Rev22:21 (package bible-kjv \($reader_ver))",
        text_sha256: $text_sha,
        prep: "chapter headings and verse numbers dropped; verses joined by spaces; every \($val_every)th chapter held out for validation",
        train_tokens: $c.train_tokens, val_tokens: $c.val_tokens, val_tokens_scored: $c.val_tokens_scored
      },
      tokenizer: {
        trainer: "spm_train (package sentencepiece \($spm_ver))", options: $spm_opts,
        model: "llama", vocab_size: $c.vocab, bos_id: 1, eos_id: 2, unk_id: 0,
        add_bos_token: true, chat_template: "{% for message in messages %}{{ message['"'"'content'"'"'] }}{% endfor %}"
      },
      recipe: {
        dim: $dim, layers: $layers, heads: $heads, kv_heads: $kv_heads, ffn: $ffn,
        head_dim: ($dim / $heads), ctx: $ctx, vocab_size: $c.vocab, params: $c.params,
        tied_embeddings: true, rope: "norm, base 10000", rms_eps: 1e-5,
        batch: $batch, steps: $steps, tokens: ($steps * $batch * $ctx),
        optimizer: "ggml-opt AdamW", lr: $lr, lr_min: $lr_min,
        schedule: "linear warm-up over \($warmup) steps, then cosine to lr_min", warmup: $warmup,
        weight_decay: $wd, beta1: $beta1, beta2: $beta2, seed: $seed, threads: $threads,
        eval_every: $eval_every, backend: $backend
      },
      training: {
        train_wall_s: $c.train_wall_s, total_wall_s: $wall,
        machine: "\($nproc) cores, \($cpu) (shared with other jobs)"
      },
      loss_curve: $c.evals,
      final_val_loss: $c.final_val_loss,
      final_val_loss_q8_0_llama_cpp: $q8_val
    }' > "$out/demo.manifest.json"

echo "demo-model: $out/demo.gguf ($gguf_size bytes), val loss $(jq .final_val_loss "$out/demo.manifest.json") (q8_0 through llama.cpp: $q8_val), $((t_end - t_start)) s"
if [ "${INSTALL:-0}" = 1 ]; then
    mkdir -p models
    cp "$out/demo.gguf" models/demo.gguf
    cp "$out/demo.manifest.json" models/demo.manifest.json
    cp "$out/demo.words.txt" models/demo.words.txt
    echo "demo-model: installed models/demo.gguf, demo.manifest.json and demo.words.txt"
fi
