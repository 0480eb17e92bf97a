#!/usr/bin/env bash
# Rebuild the default model's D2F adapter (engine/models/smollm2_d2f/) on a CPU, then measure its
# speed/quality curve against SmolLM2 run as AR: the recipe behind docs/smollm2_d2f_stage2_eval.json and its PNG.
#
#   scripts/refurbish_smollm2.sh [WORKDIR] [STAGE2_STEPS]
#
# 1. prompts: scripts/make_prompts.py over PyPI's chatterbot-corpus (240 held out, the rest for training)
#    and scripts/make_more_prompts.py (1,200 templated code/list/story/instruction prompts, seed 1)
# 2. self-distillation: SmolLM2 answers the training prompts through our engine (greedy, seed 0)
# 3. AR-preserving refurbish, stage 1: base frozen, adapter at mask positions (LoRA r=32 on every
#    projection + mask vector), soft targets, 730 steps (48 minutes on a 2-core EPYC)
# 4. stage 2, the drafter that pays: the adapter cut to q,k,v,gate,up (the projections whose input is a
#    normed hidden state: 60 matmuls a forward instead of 240, folded with the base's), trained on
#    both data sets in bf16, resumable (`--init-from` the work dir continues steps and AdamW)
# 5. eval on the held-out prompts (batched and single-stream, exact mode and presets, llama.cpp when
#    importable), plot, and copy the adapter into the package
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/.."
work="${1:-/tmp/d2f-smollm2}"
stage2="${2:-1000}"
py="${PYTHON:-python}"
d2f=("$py" -m refurbish)  # the same commands as `d2f refurbish` / `d2f eval`
mkdir -p "$work" "$root/docs"

"$py" -m pip download --no-deps -q chatterbot-corpus==1.3.3 -d "$work/corpus"
(cd "$work/corpus" && "$py" -m zipfile -e chatterbot_corpus-*.whl .)
"$py" "$here/make_prompts.py" "$work/corpus"
(cd "$here" && "$py" make_more_prompts.py 1200)
base="$("$py" -c 'from d2f.engine.models.registry import resolve_model; print(resolve_model("smollm2"))')"

"${d2f[@]}" refurbish data --teacher "$base" --prompts "$here/prompts/train.txt" --chat \
    --max-tokens 128 --seed 0 --keep-truncated --out "$work/selfdistill.jsonl"

"${d2f[@]}" refurbish --ar-preserving --teacher "$base" --data "$work/selfdistill.jsonl" --out "$work/stage1" \
    --block-size 4 --lora-rank 32 --lr 1e-3 --batch-size 2 --anchors 48 --max-len 192 \
    --steps 730 --save-every 50 --seed 0

cat "$here/prompts/train.txt" "$here/prompts/train_more.txt" > "$work/prompts2.txt"
"${d2f[@]}" refurbish data --teacher "$base" --prompts "$work/prompts2.txt" --chat --dtype bf16 \
    --max-tokens 96 --seed 0 --keep-truncated --out "$work/selfdistill2.jsonl"
# Resumable: rerun the script after an interruption and this stage continues from its last save (every
# 25 steps, adapter and AdamW state) up to step 730 + STAGE2_STEPS.
init="$work/stage1"; [ -f "$work/d2f/d2f.json" ] && init="$work/d2f"
left=$("$py" -c 'import json,sys; print(730 + int(sys.argv[2]) - json.load(open(sys.argv[1]))["step"])' "$init/d2f.json" "$stage2")
if [ "$left" -gt 0 ]; then
  "${d2f[@]}" refurbish --ar-preserving --teacher "$base" --data "$work/selfdistill2.jsonl" --out "$work/d2f" \
      --init-from "$init" --adapt q,k,v,gate,up --dtype bf16 \
      --block-size 4 --lora-rank 32 --lr 5e-4 --batch-size 2 --anchors 48 --max-len 192 \
      --steps "$left" --save-every 25 --seed 1
fi

# Shipped knob defaults, from a single-stream sweep over block size 2/4, tau_add 0.5/1.0 and tau_conf 0.5-0.9:
# block 2 with the next block opened only when the current one is done kept the AR answers best. Exact
# mode's draft width 1: the fastest exact/2 point single-stream and batched (a runner-up row past four rows
# costs a second attention call a layer; docs/refurbish.md).
"$py" - "$work/d2f/config.json" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["d2f"].update(block_size=2, tau_add=1.0, tau_act=0.9, tau_conf=0.9, draft_width=1)
json.dump(cfg, open(sys.argv[1], "w"), indent=1)
PY

# The default engine settings (dtype auto: bf16 where the CPU has native bf16; no quantization).
"${d2f[@]}" eval --model "$work/d2f" --reference-model "$base" --prompts "$here/prompts/heldout.txt" --chat \
    --dtype auto --max-tokens 64 --knobs exact/2/1,exact/2/2,exact/2/3,exact/3/1,quality,balanced,fast --single-stream 24 \
    --plot "$root/docs/smollm2_d2f_stage2_curve.png" --json > "$root/docs/smollm2_d2f_stage2_eval.json"

mkdir -p "$root/engine/models/smollm2_d2f"
cp "$work/d2f/mask_adapter.safetensors" "$root/engine/models/smollm2_d2f/"
"$py" -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["d2f"], indent=1))' \
    "$work/d2f/config.json" > "$root/engine/models/smollm2_d2f/d2f.json"
"$py" -c 'import json,sys; r=json.load(open(sys.argv[1])); [print(json.dumps({k: v for k, v in s.items() if k != "sample"})) for s in [r["ar"]] + r["settings"]]' \
    "$root/docs/smollm2_d2f_stage2_eval.json"
