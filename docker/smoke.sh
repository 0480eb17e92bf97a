#!/usr/bin/env bash
# End-to-end check of the image on a machine with Docker. Installs nothing; says what is missing.
#   bash docker/smoke.sh            # builds through a local Debian base when no registry is reachable
#   BASE_IMAGE=python:3.11-slim-bookworm bash docker/smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in docker curl python3; do
  command -v "$tool" >/dev/null || { echo "smoke: missing $tool" >&2; exit 2; }
done
docker info >/dev/null 2>&1 || { echo "smoke: no Docker engine running (start dockerd)" >&2; exit 2; }
IMAGE=${IMAGE:-d2f-serve:smoke}
NAME=d2f-smoke-$$
BASE_IMAGE=${BASE_IMAGE:-}
if [ -z "$BASE_IMAGE" ]; then
  if docker pull -q python:3.11-slim-bookworm >/dev/null 2>&1; then
    BASE_IMAGE=python:3.11-slim-bookworm
  else
    BASE_IMAGE=d2f-base:bookworm
    docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || bash docker/build-base.sh "$BASE_IMAGE"
  fi
fi
# Where PyPI is reachable but the PyTorch CPU index is not, a local CPU torch wheel is used if present.
TORCH_ARGS=()
for w in /opt/wheels/torch-*+cpu-cp311-*.whl; do
  [ -e "$w" ] && cp -n "$w" docker/wheels/ && TORCH_ARGS=(--build-arg TORCH_INDEX_URL=)
done
cleanup() { docker rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
t=$(date +%s)
docker build -q -f docker/Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" "${TORCH_ARGS[@]}" -t "$IMAGE" . >/dev/null
echo "built $IMAGE on $BASE_IMAGE in $(( $(date +%s) - t )) s, $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start=$(python3 -c 'import time; print(time.time())')
docker run -d --name "$NAME" -p "127.0.0.1:$PORT:8000" -e D2F_API_KEY=smoke-key -e D2F_DRAIN_TIMEOUT=60 \
  --network bridge "$IMAGE" >/dev/null
URL=http://127.0.0.1:$PORT
for _ in $(seq 1 240); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/health")" = 200 ] && break
  sleep 0.5
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/health")" = 200 ] || { docker logs "$NAME"; echo "smoke: never healthy" >&2; exit 1; }
AUTH="Authorization: Bearer smoke-key"
first=$(curl -sfN "$URL/v1/completions" -H "$AUTH" -H 'Content-Type: application/json' \
  -d '{"prompt": "Hello", "max_tokens": 1, "stream": true}' | head -1 || true)  # head closes the pipe early
cold=$(python3 -c "import time; print(round(time.time() - $start, 2))")
[[ "$first" == data:* ]] || { echo "smoke: no first token" >&2; exit 1; }
echo "cold start (container start -> first token): ${cold} s"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/models")" = 401 ] || { echo "smoke: API key not enforced" >&2; exit 1; }
answer=$(curl -sf "$URL/v1/chat/completions" -H "$AUTH" -H 'Content-Type: application/json' \
  -d '{"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 30, "temperature": 0}')
echo "chat: $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["choices"][0]["message"]["content"])' "$answer")"
echo "$answer" | grep -q Paris || { echo "smoke: unexpected chat answer" >&2; exit 1; }
curl -s "$URL/metrics" | grep -q '^d2f_requests_total' || { echo "smoke: no d2f_ metrics" >&2; exit 1; }
echo "metrics: $(curl -s "$URL/metrics" | grep -c '^d2f_') d2f_ samples"
# SIGTERM during a stream: the stream must finish and the container exit 0 within the grace period.
out=$(mktemp)
curl -sN "$URL/v1/completions" -H "$AUTH" -H 'Content-Type: application/json' \
  -d '{"prompt": "Count slowly:", "max_tokens": 60, "stream": true, "ignore_eos": true}' > "$out" &
reader=$!
until [ -s "$out" ]; do sleep 0.1; done
docker stop -t 90 "$NAME" >/dev/null &
stopper=$!
wait "$reader"
wait "$stopper"
code=$(docker inspect -f '{{.State.ExitCode}}' "$NAME")
tail -c 200 "$out" | grep -q 'data: \[DONE\]' || { echo "smoke: stream cut by SIGTERM" >&2; exit 1; }
grep -q '"finish_reason":"length"' "$out" || { echo "smoke: stream did not finish" >&2; exit 1; }
[ "$code" = 0 ] || { echo "smoke: container exited $code" >&2; exit 1; }
rm -f "$out"
echo "SIGTERM during a stream: stream completed, container exited 0"
echo "smoke: OK"
