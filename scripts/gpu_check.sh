#!/usr/bin/env bash
# The GPU check: on a bare GPU machine whose python3 already holds torch (CUDA), transformers, peft,
# safetensors, httpx and pytest, in one command and under 8 minutes: install the carried wheels and this
# project without touching torch (--no-deps, no index), run the GPU tier (tests/gpu), then `d2f bench gpu`,
# and leave in $OUT: gpu_env.txt, gpu_install.log, gpu_tests.log, gpu_tests.xml, gpu_bench.log, gpu_bench.json.
#
#   bash scripts/gpu_check.sh --fetch-wheels [PYVER]   # here, with network: the missing packages' wheels into
#                                                      # $D2F_WHEELS (default .whl, git-ignored), for Python
#                                                      # PYVER (default 3.12, the GPU machine's) on x86-64
#   bash scripts/gpu_check.sh                          # there (device tool: carry .whl); docs/gpu.md
#   bash scripts/gpu_check.sh --device cpu --small     # anywhere: the same steps on CPU with tiny shapes
#   ... --only tests | --only bench                     # one half, to rerun what failed within the device time
#
# Environment: PYTHON (default python3), OUT (default ./gpu-out), D2F_WHEELS (default .whl).
set -uo pipefail
cd "$(dirname "$0")/.."

# What the GPU machine lacks (fastapi imports opentelemetry-api), at the versions the suite runs with;
# typing-extensions because pydantic needs a recent one. Pure Python but pydantic-core, fetched for that Python.
WHEELS_PINNED=(fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
               typing-inspection==0.4.5 typing-extensions==4.16.0 uvicorn==0.55.0 opentelemetry-api==1.45.2)
PY=${PYTHON:-python3}
WHEELS=${D2F_WHEELS:-.whl}

if [ "${1:-}" = --fetch-wheels ]; then
  pyver=${2:-3.12}
  mkdir -p "$WHEELS" && rm -f "$WHEELS"/*.whl  # one version of each: two would stop the install there
  plats=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    plats+=(--platform "$p")
  done
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp "${plats[@]}" \
    -d "$WHEELS" "${WHEELS_PINNED[@]}" || { echo "gpu_check: wheel download failed" >&2; exit 2; }
  echo "gpu_check: $(ls "$WHEELS" | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1), in $WHEELS/ for Python $pyver"
  exit 0
fi

DEVICE=cuda
SMALL=0
ONLY=
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=${2:?--device needs a value}; shift 2 ;;
    --small) SMALL=1; shift ;;
    --only) ONLY=${2:?--only needs tests or bench}; shift 2
            case $ONLY in tests|bench) ;; *) echo "gpu_check: --only takes tests or bench" >&2; exit 2 ;; esac ;;
    *) echo "gpu_check: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
t0=$SECONDS
step() { echo "gpu_check [$((SECONDS - t0)) s]: $*"; }

step "python: $(command -v "$PY"), device $DEVICE"
{ "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda",
             torch.version.cuda, "devices", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])'
  command -v nvidia-smi >/dev/null && nvidia-smi -L; } >"$OUT/gpu_env.txt" 2>&1
cat "$OUT/gpu_env.txt"
if [ "${DEVICE%%:*}" = cuda ] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  echo "gpu_check: $PY's torch sees no CUDA device; nothing to check" >&2
  exit 3
fi

step "installing the carried wheels and the project (no index, no dependencies: torch stays as it is)"
install_failed() { cat "$OUT/gpu_install.log" >&2; echo "gpu_check: $1 failed (log above)" >&2; exit 2; }
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
: >"$OUT/gpu_install.log"
if [ ${#wheels[@]} -gt 0 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile "${wheels[@]}" >>"$OUT/gpu_install.log" 2>&1 \
    || install_failed "installing the wheels of $WHEELS"
fi
# Editable, as CI installs it: the repository's own d2f/ folder shadows an installed copy under pytest.
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$OUT/gpu_install.log" 2>&1 \
  || install_failed "installing the project"
if ! err=$("$PY" -c 'import d2f.server.app, d2f.bench.gpu' 2>&1); then
  echo "$err" >&2
  echo "gpu_check: the project does not import (a wheel missing from $WHEELS? bash $0 --fetch-wheels)" >&2
  exit 2
fi

tests_rc="not run"
bench_rc="not run"
if [ "$ONLY" != bench ]; then
  step "GPU tier (tests/gpu) on $DEVICE"
  D2F_TEST_DEVICE=$DEVICE timeout -k 10 240 "$PY" -m pytest tests/gpu -p no:cacheprovider -rs -W ignore::FutureWarning \
    --junitxml="$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/gpu_tests.log"
  tests_rc=${PIPESTATUS[0]}
fi

if [ "$ONLY" != tests ]; then
  if [ "$SMALL" = 1 ]; then
    bench=(--shapes tiny --cache-len 40 --max-tokens 8 --concurrency 1,4 --copy-mib 16 --kv-cache-memory 16777216)
  else
    bench=(--budget-s 150)  # sections not begun by then are listed, not run: the JSON is whole by the timeout
  fi
  step "benchmark (d2f bench gpu) on $DEVICE"
  # The JSON goes to --out section by section (what a timeout cuts short stays); stdout repeats it whole.
  timeout -k 10 180 "$PY" -m d2f bench gpu --device "$DEVICE" --out "$OUT/gpu_bench.json" "${bench[@]}" \
    >/dev/null 2>"$OUT/gpu_bench.log"
  bench_rc=$?
  tail -n 5 "$OUT/gpu_bench.log"
fi

step "done: tests exit $tests_rc, benchmark exit $bench_rc; results in $OUT"
for rc in "$tests_rc" "$bench_rc"; do
  case $rc in 0|"not run") ;; *) exit 1 ;; esac
done
