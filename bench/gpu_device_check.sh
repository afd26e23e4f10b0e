#!/usr/bin/env bash
# The gpu check on a real GPU (issue 19 part 2's device run): the single file reads the real
# NVML, reports its verdict as JSON, and its cost per poll is measured.
#
#   bash bench/gpu_device_check.sh [POLLS]          on a machine with the NVIDIA driver
#   FAKE_NVML=1 bash bench/gpu_device_check.sh      here: the fake libnvidia-ml.so.1 of
#                                                   tests/fakenvml, 8 healthy GPUs
#
# Prints, in order: the machine (nvidia-smi -L when present, the *_VISIBLE_DEVICES variables);
# what `--gpu auto` expands into (--print-config); the /livez and /readyz JSON of a daemon
# (python3 probed.py, the single file) with a gpu-live and a gpu-ready check; then
# bench/gpu_poll_cost.py: microseconds per NVML read, per check poll, per shared poll, over
# POLLS polls (default 1000). Needs python3 only; everything it starts is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
polls=${1:-1000}
py=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/probed-gpu.XXXXXX")
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ "${FAKE_NVML:-0}" = 1 ]; then
  cc -O2 -shared -fPIC -o "$work/libnvidia-ml.so.1" tests/fakenvml/fake_nvml.c
  { echo "count 8"; echo "driver 999.99.99-fake"; } > "$work/state"
  export LD_LIBRARY_PATH="$work${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export FAKE_NVML_STATE="$work/state"
  echo "== FAKE NVML: $work/libnvidia-ml.so.1 (tests/fakenvml/fake_nvml.c), 8 healthy GPUs"
fi

echo "== machine"
uname -srm
"$py" --version
if command -v nvidia-smi >/dev/null; then nvidia-smi -L; else echo "nvidia-smi: not found"; fi
env | grep -E '^(CUDA|NVIDIA)_VISIBLE_DEVICES=' || echo "no *_VISIBLE_DEVICES set"

echo "== python3 probed.py --gpu auto --print-config (gpu checks)"
"$py" probed.py --gpu auto --print-config | "$py" -c '
import json, sys
for c in json.load(sys.stdin)["checks"]:
    print(json.dumps(c))'

port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$py" probed.py --addr "127.0.0.1:$port" --interval 1s \
  --check "gpu name=gpu-live faults=restart probes=live" \
  --check "gpu name=gpu-ready faults=all probes=ready" 2> "$work/daemon.log" &
pid=$!
echo "== daemon pid $pid on 127.0.0.1:$port; /livez and /readyz as JSON"
"$py" - "$port" <<'EOF'
import json, sys, time, urllib.error, urllib.request
port = int(sys.argv[1])
def get(path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
deadline = time.monotonic() + 20
while True:
    try:
        status, doc = get("/readyz?format=json")
        if all(c["status"] != "pending" for c in doc["checks"]) or time.monotonic() > deadline:
            break
    except OSError:
        if time.monotonic() > deadline:
            raise
    time.sleep(0.2)
for path in ("/livez?format=json", "/readyz?format=json"):
    status, doc = get(path)
    print(path, status)
    print(json.dumps(doc, indent=1))
EOF
kill "$pid"; wait "$pid" || true; pid=""
echo "== daemon log"
cat "$work/daemon.log"

echo "== cost per poll ($polls polls)"
"$py" bench/gpu_poll_cost.py --polls "$polls"
