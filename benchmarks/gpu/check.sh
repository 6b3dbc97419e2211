#!/usr/bin/env bash
# Prepared GPU check (fits in 10 minutes on a fresh H100/H200 machine; see README.md here):
#   1. bench energy   (OpenMM loops idle and with busy cores, pool, torch engines)
#   2. bench flow     (laptop and gpu preset flows, eager vs torch.compile)
#   3. a time-boxed gpu-preset training with evaluation
# Every result is JSON (or a log) under $OUT. Run from the repository root:
#   bash benchmarks/gpu/check.sh          # on the GPU machine, wheels in .whl/
#   bash benchmarks/gpu/check.sh --cpu    # CPU dry run with tiny sizes (checks the Python parts)
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SYSTEM=benchmarks/gpu/aldp_system          # saved System: the image has no openmmtools
REFERENCE=openmm_cmt/data/alanine-dipeptide-reference.npz
MODE=gpu
if [ "${1:-}" = "--cpu" ]; then MODE=cpu; fi

if [ "$MODE" = gpu ]; then
  if ! PYTHONPATH=/tmp/site $PY -c "import openmm" 2>/dev/null; then
    ls .whl/openmm-8.6.1-*.whl .whl/openmm_cuda_13-8.6.1-*.whl >/dev/null || {
      echo "openmm wheels missing in .whl/ (see benchmarks/gpu/README.md)"; exit 2; }
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
      .whl/openmm-8.6.1-*.whl .whl/openmm_cuda_13-8.6.1-*.whl || exit 2
  fi
  export PYTHONPATH=/tmp/site:$PWD
  NV=$($PY -c "import nvidia, os; p = list(nvidia.__path__)[0]; print(':'.join(os.path.join(p, d, 'lib') for d in sorted(os.listdir(p)) if os.path.isdir(os.path.join(p, d, 'lib'))))" 2>/dev/null)
  export LD_LIBRARY_PATH=${NV}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  DEVICE=cuda
  ENERGY_ARGS="--n 100000 --loop-seconds 3"
  FLOW_ARGS="--device cuda --presets laptop gpu --modes eager compiled compiled-cudagraphs --n 65536 --steps 20 --repeats 3"
  TRAIN_ARGS="--preset gpu --device cuda --max-minutes ${TRAIN_MINUTES:-2} --set eval_samples=200000"
  T_ENERGY=120; T_FLOW=250; T_TRAIN=${TRAIN_TIMEOUT:-200}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  DEVICE=cpu
  ENERGY_ARGS="--n 500 --loop-seconds 0.5 --n-workers 1 --engines openmm-loop-CPU openmm-loop-CPU-busy torch-cpu-float32"
  FLOW_ARGS="--device cpu --presets laptop --modes eager --n 256 --steps 1 --repeats 1"
  TRAIN_ARGS="--preset laptop --device cpu --steps 1 --set cmt.samples_per_step=256 --set cmt.buffer_size=512
    --set cmt.grad_steps_per_step=2 --set cmt.batch_size=128 --set energy_compile=false --set eval_samples=512"
  T_ENERGY=300; T_FLOW=300; T_TRAIN=300
fi

# One line of JSON per stage: name, exit status, seconds.
stage() {
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  grep -v "^W[0-9]" "$OUT/$name.log" | tail -25
  echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - start ))}" >> "$OUT/stages.jsonl"
}

$PY - > "$OUT/environment.json" <<'EOF'
import json, os, platform, torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpus": os.cpu_count(), "load_average": os.getloadavg()}
try:
    import openmm
    info["openmm"] = openmm.__version__
    info["platforms"] = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
except Exception as err:
    info["openmm_error"] = str(err)
print(json.dumps(info))
EOF
cat "$OUT/environment.json"

stage bench_energy $T_ENERGY $PY -m openmm_cmt.cli bench energy --system $SYSTEM $ENERGY_ARGS --json "$OUT/bench_energy.json"
stage bench_flow $T_FLOW $PY -m openmm_cmt.cli bench flow --system $SYSTEM $FLOW_ARGS --json "$OUT/bench_flow.json"
rm -rf /tmp/gpu-check-run
stage train $T_TRAIN $PY -m openmm_cmt.cli train $SYSTEM $TRAIN_ARGS --out /tmp/gpu-check-run \
  --reference $REFERENCE --quiet
for f in metrics.json history.json config.json; do
  cp /tmp/gpu-check-run/$f "$OUT/train_$f" 2>/dev/null
done
rm -rf /tmp/gpu-check-run
cat "$OUT/stages.jsonl"
