#!/usr/bin/env bash
# One prepared device run: bench energy, then GPU training with a wall-time cap.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site runs/g_reference_gpu/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
NV=$(python3 -c "import nvidia,os;p=list(nvidia.__path__)[0];print(':'.join(os.path.join(p,d,'lib') for d in sorted(os.listdir(p)) if os.path.isdir(os.path.join(p,d,'lib'))))")
export LD_LIBRARY_PATH=$NV:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, openmm; print(torch.__version__, openmm.__version__, [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())])"
date
timeout 75 python3 -m openmm_cmt.cli bench energy --system runs/aldp_system --n 100000 --loop-seconds 3 \
  --engines openmm-loop-CUDA openmm-loop-CPU torch-cuda-float32 --json $OUT/bench_energy.json 2>&1 | grep -v "^W1126" | tail -12
date
timeout ${TRAIN_TIMEOUT:-330} python3 -m openmm_cmt.cli train runs/aldp_system --preset gpu --out /tmp/run \
  --max-minutes ${TRAIN_MINUTES:-3.5} --set cmt.n_steps=200 --set cmt.grad_steps_per_step=100 --set eval_samples=200000 \
  --reference runs/g_reference_gpu/aldp_reference_300x16.npz --quiet 2>&1 | grep -v "^W1126" | tail -30
date
cp /tmp/run/metrics.json /tmp/run/history.json /tmp/run/ramachandran.png /tmp/run/annealing.png /tmp/run/ess.png $OUT/ 2>/dev/null
ls $OUT
