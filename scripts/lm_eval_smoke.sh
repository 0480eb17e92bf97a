#!/usr/bin/env bash
# lm-evaluation-harness against a live `d2f serve` on the default model, with tasks whose data ships here
# (scripts/lm_eval_tasks/: 50 items each, nothing fetched from a hub). Run by hand, not in CI (minutes):
#
#   scripts/lm_eval_smoke.sh [OUTDIR]
#
# 1. a scratch venv (LM_EVAL_VENV, default /tmp/d2f-lm-eval-venv) with lm-eval[api] and transformers (its
#    tokenizer), from PyPI
# 2. `d2f serve` on the default model (SmolLM2-135M-Instruct, converted into D2F_CACHE_DIR on first use) in
#    fp32 with no quantization, so the cross-check below can hold it to 1e-3
# 3. d2f_smoke_gen (generate_until) through local-chat-completions, d2f_smoke_mc (multiple_choice,
#    loglikelihoods from echo + logprobs) through local-completions; both scores printed
# 4. the multiple-choice loglikelihoods recomputed by transformers on the same weights: they must agree
#    within 1e-3, and so must the accuracies
#
# PYTHON is the interpreter with d2f-serve installed (default: the repo's .venv, else python3); PORT the port.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/.."
out="$(mkdir -p "${1:-/tmp/d2f-lm-eval}" && cd "${1:-/tmp/d2f-lm-eval}" && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py=python3
venv="${LM_EVAL_VENV:-/tmp/d2f-lm-eval-venv}"
port="${PORT:-8765}"
model=smollm2-135m-instruct

if [ ! -x "$venv/bin/lm_eval" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "lm-eval[api]==0.4.13" transformers
fi

"$py" -m d2f serve --port "$port" --dtype fp32 --quantization none --log-level warning &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 600); do  # the first start converts the model (a minute or two)
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  kill -0 "$server" 2>/dev/null || { echo "d2f serve exited" >&2; exit 1; }
  sleep 1
done
curl -sf "http://127.0.0.1:$port/health" >/dev/null || { echo "d2f serve did not become ready" >&2; exit 1; }
# The converted model's directory holds the tokenizer files lm-eval tokenizes with (offline, by path).
model_dir="$("$py" -c 'from d2f.engine.models.registry import resolve_model; print(resolve_model("smollm2"))')"

cd "$here/lm_eval_tasks"  # the task YAMLs name their data files relative to here
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$venv/bin/lm_eval" run --model local-chat-completions --tasks d2f_smoke_gen --include_path . \
    --apply_chat_template --output_path "$out/gen" --log_samples \
    --model_args "model=$model,base_url=http://127.0.0.1:$port/v1/chat/completions,num_concurrent=4,max_retries=1"
"$venv/bin/lm_eval" run --model local-completions --tasks d2f_smoke_mc --include_path . \
    --batch_size 8 --output_path "$out/mc" --log_samples \
    --model_args "model=$model,base_url=http://127.0.0.1:$port/v1/completions,tokenizer_backend=huggingface,tokenizer=$model_dir,num_concurrent=2,max_retries=1"
kill "$server" && wait "$server" || true  # its cores go to the cross-check

"$py" "$here/lm_eval_crosscheck.py" "$model_dir" "$out"
