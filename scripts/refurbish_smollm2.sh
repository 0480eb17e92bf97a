#!/usr/bin/env bash
# Refurbish the embedded default model (SmolLM2-135M-Instruct) into a D2F model on CPU, then draw its
# speed/quality curve against the original run as AR: the recipe behind docs/smollm2_d2f_curve.png.
#
#   scripts/refurbish_smollm2.sh [WORKDIR] [MINUTES]
#
# Steps: self-distillation data from the AR model through our engine (greedy, answers ending in EOS),
# AR adaptation with LoRA r=32 on q/k/v/o (mask token: SmolLM2's unused <empty_output>, id 16),
# then `eval` on held-out prompts. Everything is seeded; runs `nice` so it never starves a shared box.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-/tmp/d2f-smollm2}"
minutes="${2:-6}"
py="${PYTHON:-python}"
d2f=(nice -n 19 "$py" -m refurbish)  # the same commands as `d2f refurbish` / `d2f eval`
base="$("$py" -c 'from engine.cli import resolve_model; print(resolve_model(None))')"
mkdir -p "$work"

"${d2f[@]}" refurbish data --teacher "$base" --prompts "$here/prompts/train.txt" --chat \
    --max-tokens 96 --seed 0 --out "$work/selfdistill.jsonl"

"${d2f[@]}" refurbish --teacher "$base" --data "$work/selfdistill.jsonl" --out "$work/d2f" \
    --block-size 16 --minutes "$minutes" --batch-size 4 --max-len 160 --save-every 50 --seed 0

"${d2f[@]}" eval --model "$work/d2f" --reference-model "$base" --prompts "$here/prompts/heldout.txt" --chat \
    --max-tokens 64 --knobs 0.95,0.9,0.85,0.8,0.7 --plot "$here/../docs/smollm2_d2f_curve.png" --json \
    > "$work/eval.json"
"$py" -c 'import json,sys; r=json.load(open(sys.argv[1])); [print(json.dumps({k: v for k, v in s.items() if k != "sample"})) for s in [r["ar"]] + r["settings"]]' "$work/eval.json"
