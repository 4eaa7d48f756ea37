#!/usr/bin/env bash
# Issue 18 on a lent GPU machine, in one command: the SDXL benchmark with its levers, the studio's CUDA
# checks, the FLUX benchmark, and a restart's first image with the compiled code cached on disk.
#
# The machine has no network: it runs its own python3 (torch, accelerate, hub, tokenizers are there) with
# the wheels that benchmarks/gpu_wheels.sh put in .whl/ beforehand (diffusers, transformers, compel,
# SQLAlchemy, ...), installed into /tmp/site. The device tool's call:
#
#     run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=510)
#
# Every part has its own time limit inside a total BUDGET (seconds, default 470: the issue's 8 minutes;
# the card's 15 minutes must also hold the machine's start); a part that fails or runs out of time costs
# only itself, since each writes its JSON after every measurement. PARTS (default "sdxl checks flux
# restart") picks parts, for a second call that redoes one: PARTS=flux BUDGET=200. Results land in $OUT (at most 8 files come
# back): gpu_sdxl.json, gpu_flux.json, checks.json, restart.json, performance.md (all tables) and log.txt.
#
# Here, without a card, `OUT=/tmp/gpu TINY=1 benchmarks/gpu_check.sh` runs the same steps at toy size.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
BUDGET=${BUDGET:-470}
PARTS=" ${PARTS:-sdxl checks flux restart} "
PY=${PYTHON:-python3}
mkdir -p "$OUT"
# The models are saved as folders here (SDXL 7 GB, FLUX 33 GB); WORK_ROOT moves them off a small /tmp.
WORK=$(mktemp -d "${WORK_ROOT:-/tmp}/atelier-gpu-check.XXXXXX")
mkdir -p "$WORK/tmp"
export TMPDIR="$WORK/tmp"
START=$SECONDS
exec > >(tee -a "$OUT/log.txt") 2>&1

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False
# Compiled code on disk, shared by every part: the restart part measures what a restarted studio pays.
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor"

if [ "${TINY:-}" = 1 ]; then
  SIZE=(--tiny --steps 3 --flux-steps 2 --lever-steps 2)
else
  SIZE=(--steps 30 --flux-steps 8 --lever-steps 10)
fi

# part NAME LIMIT COMMAND...: run with at most LIMIT seconds, never past the budget; say how it ended.
part() {
  local name=$1 limit=$2
  shift 2
  case "$name" in
    sdxl | checks | flux | restart)
      if [[ "$PARTS" != *" $name "* ]]; then
        echo "== $name: not asked for (PARTS)"
        return
      fi
      ;;
  esac
  local left=$((BUDGET - (SECONDS - START) - 15))
  if [ "$left" -lt 20 ]; then
    echo "== $name: skipped, the budget is spent"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name: up to ${limit}s (at ${SECONDS}s)"
  timeout -k 10 "$limit" "$@"
  local code=$?
  rm -rf "$WORK"/tmp/atelier-* # a part stopped at its limit leaves its model folder behind
  case $code in
    0) echo "== $name: done" ;;
    124 | 137) echo "== $name: stopped at its ${limit}s limit; what it measured is kept" ;;
    *) echo "== $name: exited $code" ;;
  esac
}

# The JSON goes straight to $OUT, rewritten after every measurement, so even a call stopped from outside
# brings back what was measured; each part's own markdown stays in $WORK (8 files at most come back).
TO=(--out "$OUT" --report-dir "$WORK")

# performance.md: every table so far, remade after each part.
report() {
  "$PY" benchmarks/gpu_report.py "$OUT/performance.md" "$OUT/gpu_sdxl.json" "$OUT/checks.json" \
    "$OUT/gpu_flux.json" "$OUT/restart.json" || echo "== report: could not be made"
}

# 1. The carried libraries, ahead of the image's own.
# WHEELS=0 (the CPU test) runs on the venv as it is.
if [ "${WHEELS:-1}" = 1 ] && compgen -G ".whl/*.whl" >/dev/null; then
  part wheels 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl
  export PYTHONPATH="$WORK/site:$PWD"
else
  echo "== wheels: none in .whl/ (run benchmarks/gpu_wheels.sh here first, then carry .whl); using what is installed"
  export PYTHONPATH="$PWD"
fi

# 2. What this machine is, and whether Atelier imports on it.
part preflight 60 "$PY" - <<'EOF'
import importlib, platform, subprocess
import torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory // 2**20, "MiB")
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm", "--format=csv"], capture_output=True, text=True).stdout)
print(subprocess.run(["df", "-h", "/tmp", "."], capture_output=True, text=True).stdout)
for name in ("diffusers", "transformers", "huggingface_hub", "accelerate", "peft", "compel", "sqlalchemy", "pipelines.engine", "webui.studio"):
    try:
        module = importlib.import_module(name)
        print("import", name, getattr(module, "__version__", "ok"))
    except Exception as error:
        print("import", name, "FAILED:", type(error).__name__, error)
EOF

# 3. SDXL: stock against the engine, each lever, the tuned engine; the issue's main figures.
part sdxl 280 "$PY" benchmarks/gpu.py --families sdxl --parts stock,engine,levers,tuned --name gpu_sdxl "${TO[@]}" "${SIZE[@]}"
report

# 4. The studio's CUDA paths through the real engine and studio (tiny widths: these check paths, not speed).
part checks 60 "$PY" benchmarks/gpu_checks.py "${TO[@]}"
report

# 5. FLUX: stock against the tuned engine (SDXL's lever findings pick its switches). Its 33 GB of
#    weights take long to save and load, so the engine at today's defaults is left out.
part flux 125 "$PY" benchmarks/gpu.py --families flux --parts stock,tuned --name gpu_flux "${TO[@]}" \
  --levers-from "$OUT/gpu_sdxl.json" "${SIZE[@]}"
report

# 6. A restarted studio's first compiled image: a new process, the compiled code already on disk.
part restart 60 "$PY" benchmarks/gpu.py --families sdxl --parts restart --name restart "${TO[@]}" "${SIZE[@]}"
report
echo "== all parts ended at ${SECONDS}s; results in $OUT"
rm -rf "$WORK"
