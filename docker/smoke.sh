#!/usr/bin/env bash
# End-to-end check of the CPU image on a machine with Docker. Installs nothing; says what is missing.
#   bash docker/smoke.sh                 # base: python:3.11-slim-bookworm if it can be had, else a local
#                                        # Debian base made by docker/build-base.sh
#   BASE_IMAGE=d2f-base:bookworm bash docker/smoke.sh
#   KEEP=1 bash docker/smoke.sh          # keep the image (and a base built here) for the next run
# It builds the image, then checks: arguments reach `d2f serve`; the server starts with a read-only root
# filesystem and with no network at all; /health; the API key; a completion; a streamed chat; /metrics;
# Docker's HEALTHCHECK; SIGTERM during a stream (the stream finishes, the container exits 0).
# At the end it removes what it made and prints the image size and the cold start time.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in docker curl python3; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "smoke: missing ${missing[*]} (Debian: apt-get install docker.io curl python3)" >&2; exit 2
fi
docker info >/dev/null 2>&1 || { echo "smoke: no Docker engine answers (start dockerd)" >&2; exit 2; }

IMAGE=${IMAGE:-d2f-serve:smoke}
KEEP=${KEEP:-0}
WHEELS=${TORCH_WHEEL_DIR:-/opt/wheels}   # a local CPU torch wheel, for where the PyTorch index is out of reach
TAG=d2f-smoke-$$
WORK=$(mktemp -d)
made_images=() made_files=("$WORK") containers=()
cleanup() {
  local rc=$?
  [ -z "${prom_pid:-}" ] || kill "$prom_pid" 2>/dev/null || true
  for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
  rm -rf "${made_files[@]}"
  if [ "$KEEP" != 1 ]; then
    for i in "${made_images[@]}"; do docker rmi -f "$i" >/dev/null 2>&1 || true; done
  fi
  [ $rc = 0 ] || echo "smoke: FAILED" >&2
}
trap cleanup EXIT
fail() { echo "smoke: $*" >&2; for c in "${containers[@]}"; do docker logs --tail 30 "$c" 2>&1 | sed "s/^/[$c] /" >&2; done; exit 1; }
now() { python3 -c 'import time; print(f"{time.time():.3f}")'; }
since() { python3 -c "import time; print(f'{time.time() - $1:.1f}')"; }

# ---- the base image
BASE_IMAGE=${BASE_IMAGE:-}
if [ -z "$BASE_IMAGE" ]; then
  if docker image inspect python:3.11-slim-bookworm >/dev/null 2>&1 \
     || timeout 60 docker pull -q python:3.11-slim-bookworm >/dev/null 2>&1; then
    BASE_IMAGE=python:3.11-slim-bookworm
  else
    BASE_IMAGE=d2f-base:bookworm
    echo "smoke: no registry answers; using the local Debian base $BASE_IMAGE"
  fi
fi
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  [ "$BASE_IMAGE" = d2f-base:bookworm ] || fail "base image $BASE_IMAGE not found"
  bash docker/build-base.sh "$BASE_IMAGE"
  made_images+=("$BASE_IMAGE")
fi

# ---- the image
build_args=(--build-arg BASE_IMAGE="$BASE_IMAGE")
pytag=$(docker run --rm --entrypoint python3 "$BASE_IMAGE" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
for w in "$WHEELS"/torch-*+cpu-"$pytag"-*.whl; do
  [ -e "$w" ] || continue
  if [ ! -e "docker/wheels/$(basename "$w")" ]; then cp "$w" docker/wheels/; made_files+=("docker/wheels/$(basename "$w")"); fi
  build_args+=(--build-arg TORCH_INDEX_URL=)
  echo "smoke: torch from the local wheel $(basename "$w")"
done
log=$WORK/build.log
t=$(now)
docker build -f docker/Dockerfile "${build_args[@]}" -t "$IMAGE" . >"$log" 2>&1 || { tail -40 "$log" >&2; fail "build failed"; }
made_images+=("$IMAGE")
size=$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1/1e9}')
echo "built $IMAGE on $BASE_IMAGE in $(since "$t") s: $size"
[ "$(docker image inspect -f '{{.Config.User}}' "$IMAGE")" = 10001:10001 ] || fail "image does not run as uid 10001"

# ---- arguments after the image name reach `d2f serve`
help=$(docker run --rm "$IMAGE" --help 2>&1) || fail "'docker run IMAGE --help' failed: $help"
grep -q -- '--lora' <<<"$help" && grep -q D2F_MODEL <<<"$help" || fail "'docker run IMAGE --help' is not d2f serve's help"
echo "arguments: 'docker run $IMAGE --help' prints d2f serve's flags"

# ---- no network at all, read-only root: the model is in the image
off=$TAG-offline
containers+=("$off")
docker run -d --name "$off" --network none --read-only --tmpfs /tmp "$IMAGE" >/dev/null
probe='import json, sys, urllib.request as u
try:
    ok = u.urlopen("http://127.0.0.1:8000/health", timeout=2).status == 200
except Exception:
    ok = False
if ok and sys.argv[1:]:
    req = u.Request("http://127.0.0.1:8000/v1/completions", headers={"Content-Type": "application/json"},
                    data=json.dumps({"prompt": "1, 2, 3,", "max_tokens": 4}).encode())
    print(json.load(u.urlopen(req, timeout=60))["choices"][0]["text"])
sys.exit(0 if ok else 1)'
for _ in $(seq 1 240); do docker exec "$off" python -c "$probe" 2>/dev/null && break; sleep 0.5; done
text=$(docker exec "$off" python -c "$probe" complete) || fail "no answer from a container without network"
docker stop -t 30 "$off" >/dev/null
[ "$(docker inspect -f '{{.State.ExitCode}}' "$off")" = 0 ] || fail "offline container did not exit 0"
echo "no network, read-only root: served a completion ($(tr -d '\n' <<<"$text" | cut -c1-40)...), exited 0"

# ---- the served container: loopback port, read-only root, API key
NAME=$TAG
containers+=("$NAME")
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
AUTH="Authorization: Bearer smoke-key"
JSON="Content-Type: application/json"
start=$(now)
docker run -d --name "$NAME" -p "127.0.0.1:$PORT:8000" --read-only --tmpfs /tmp \
  -e D2F_API_KEY=smoke-key -e D2F_DRAIN_TIMEOUT=60 "$IMAGE" >/dev/null
code=000
for _ in $(seq 1 480); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "$URL/health" || true)
  [ "$code" = 200 ] && break
  [ "$(docker inspect -f '{{.State.Running}}' "$NAME")" = true ] || fail "container exited while starting"
  sleep 0.25
done
[ "$code" = 200 ] || fail "/health never turned 200 (last $code)"
healthy=$(since "$start")
first=$(curl -sN "$URL/v1/completions" -H "$AUTH" -H "$JSON" \
  -d '{"prompt": "Hello", "max_tokens": 16, "stream": true}' | head -1 || true)  # head ends the stream early
cold=$(since "$start")
[[ "$first" == data:* ]] || fail "no first streamed token: $first"
echo "cold start: container start -> /health 200 in ${healthy} s, -> first token in ${cold} s"

[ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/models")" = 401 ] || fail "API key not enforced"
curl -sf "$URL/v1/models" -H "$AUTH" | grep -q '"object": *"list"' || fail "/v1/models with the key"
echo "API key: 401 without, 200 with"

out=$(curl -sf "$URL/v1/completions" -H "$AUTH" -H "$JSON" \
  -d '{"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}') || fail "completion failed"
python3 - "$out" <<'EOF' || fail "bad completion: $out"
import json, sys
r = json.loads(sys.argv[1])
assert r["object"] == "text_completion" and r["choices"][0]["text"], r
assert r["usage"]["completion_tokens"] > 0, r
print("completion:", repr(r["choices"][0]["text"]), r["usage"])
EOF

sse=$WORK/chat.sse
curl -sfN "$URL/v1/chat/completions" -H "$AUTH" -H "$JSON" -d '{"messages": [{"role": "user",
  "content": "What is the capital of France?"}], "max_tokens": 30, "temperature": 0, "stream": true}' >"$sse" \
  || fail "streamed chat failed"
python3 - "$sse" <<'EOF' || fail "bad chat stream: $(head -c 600 "$sse")"
import json, sys
lines = [l for l in open(sys.argv[1]).read().split("\n\n") if l.strip()]
assert lines[-1] == "data: [DONE]", lines[-1]
chunks = [json.loads(l[len("data: "):]) for l in lines[:-1]]
text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
assert len(finishes) == 1 and "Paris" in text, (finishes, text)
print(f"streamed chat: {len(chunks)} chunks, finish_reason={finishes[0]}: {text!r}")
EOF

metrics=$(curl -sf "$URL/metrics") || fail "/metrics failed"
for name in d2f_requests_total d2f_requests_waiting d2f_requests_running d2f_time_to_first_block_seconds_bucket; do
  grep -q "^$name{" <<<"$metrics" || fail "/metrics lacks $name"
done
echo "metrics: $(grep -c '^d2f_' <<<"$metrics") d2f_ samples, model_name=$(grep -o 'model_name="[^"]*"' <<<"$metrics" | sort -u | head -1)"

for _ in $(seq 1 60); do
  [ "$(docker inspect -f '{{.State.Health.Status}}' "$NAME")" = healthy ] && break; sleep 1
done
[ "$(docker inspect -f '{{.State.Health.Status}}' "$NAME")" = healthy ] || fail "Docker HEALTHCHECK not healthy"
echo "HEALTHCHECK: healthy"

# ---- the repository's Prometheus config and rules on the live server; the dashboard's queries answer
if command -v prometheus >/dev/null; then
  pdir=$WORK/prometheus
  mkdir -p "$pdir"
  PPORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  sed -e "s/d2f:8000/127.0.0.1:$PORT/" -e 's/\(scrape\|evaluation\)_interval: .*/\1_interval: 1s/' \
    docker/prometheus/prometheus.yml >"$pdir/prometheus.yml"
  cp docker/prometheus/rules.yml "$pdir/"
  prometheus --config.file="$pdir/prometheus.yml" --storage.tsdb.path="$pdir/data" \
    --web.listen-address="127.0.0.1:$PPORT" >"$pdir/log" 2>&1 &
  prom_pid=$!
  for i in 1 2 3 4; do
    curl -sf "$URL/v1/completions" -H "$AUTH" -H "$JSON" -d "{\"prompt\": \"$i + $i =\", \"max_tokens\": 4}" >/dev/null
    sleep 1
  done
  python3 - "http://127.0.0.1:$PPORT" <<'EOF2' || { tail -20 "$pdir/log" >&2; fail "Prometheus check failed"; }
import json, re, sys, time, urllib.parse, urllib.request
base = sys.argv[1]
def get(path, **q):
    return json.load(urllib.request.urlopen(f"{base}{path}?{urllib.parse.urlencode(q)}", timeout=5))["data"]
records = re.findall(r"record: (\S+)", open("docker/prometheus/rules.yml").read())
dash = json.load(open("docker/grafana/dashboards/d2f.json"))
panels = {p["title"]: [t["expr"].replace("$model_name", ".*") for t in p["targets"]] for p in dash["panels"]}
optional = {"Errors and rejections by outcome (req/s)"}  # empty while nothing failed
deadline = time.time() + 60
while True:
    try:
        empty_rec = [r for r in records if not get("/api/v1/query", query=r)["result"]]
        empty = [t for t, es in panels.items() if not all(get("/api/v1/query", query=e)["result"] for e in es)]
        groups = get("/api/v1/rules")["groups"]
    except OSError:
        empty_rec, empty, groups = records, list(panels), []
    if not empty_rec and not set(empty) - optional or time.time() > deadline:
        break
    time.sleep(1)
bad = [r["name"] for g in groups for r in g["rules"] if r.get("health") != "ok"]
n = sum(len(g["rules"]) for g in groups)
assert groups and not bad, f"rules not healthy: {bad}"
assert not empty_rec and not set(empty) - optional, f"no data: recording rules {empty_rec}, panels {empty}"
print(f"Prometheus (the repository's config and {n} rules, all healthy): {len(records)} recording rules and "
      f"{len(panels) - len(empty)}/{len(panels)} dashboard panels have data" + (f" (empty: {empty})" if empty else ""))
EOF2
  kill "$prom_pid"; wait "$prom_pid" 2>/dev/null || true; prom_pid=
else
  echo "Prometheus check skipped: no prometheus binary (Debian: apt-get install prometheus)"
fi

# ---- SIGTERM during a stream: it finishes, new requests are refused meanwhile, the container exits 0
stream=$WORK/drain.sse
curl -sN "$URL/v1/completions" -H "$AUTH" -H "$JSON" \
  -d '{"prompt": "Count slowly:", "max_tokens": 64, "stream": true, "ignore_eos": true}' >"$stream" &
reader=$!
until [ -s "$stream" ]; do sleep 0.05; done
before=$(grep -c '^data:' "$stream" || true)
t=$(now)
docker stop -t 90 "$NAME" >/dev/null &
stopper=$!
sleep 0.5
during=$(curl -s -o /dev/null -w '%{http_code}' "$URL/health" || true)
refused=$(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/completions" -H "$AUTH" -H "$JSON" -d '{"prompt": "x", "max_tokens": 1}' || true)
reader_alive=$(kill -0 "$reader" 2>/dev/null && echo yes || echo no)
wait "$reader" || true
wait "$stopper"
stopped=$(since "$t")
after=$(grep -c '^data:' "$stream" || true)
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$NAME")
tail -c 300 "$stream" | grep -q 'data: \[DONE\]' || fail "stream cut by SIGTERM: $(tail -c 300 "$stream")"
grep -q '"finish_reason":"length"' "$stream" || fail "stream did not run to max_tokens"
[ "$after" -gt "$before" ] || fail "the stream ended before SIGTERM arrived: nothing was drained"
if [ "$reader_alive" = yes ]; then
  [ "$during" = 503 ] || fail "/health was $during while draining, not 503"
  [ "$refused" = 503 ] || fail "a new request got $refused while draining, not 503"
fi
[ "$exit_code" = 0 ] || fail "container exited $exit_code"
echo "SIGTERM mid-stream: $before -> $after chunks after the signal, [DONE] sent; while draining /health $during," \
  "new request $refused; exit 0 after ${stopped} s (grace 90 s)"
echo "summary: image $IMAGE $size; cold start ${cold} s to first token (${healthy} s to /health 200)"
echo "smoke: OK"
