#!/usr/bin/env bash
# Issue 14's GPU figures, in one run on a lent device (see ../.library/device/README.md):
#   echo /.gpu-data/ >> .git/info/exclude; mkdir -p .gpu-data; cp ../shared/data/wonderland.txt .gpu-data/
#   device run, carry [".gpu-data"], command "bash bench/gpu.sh", timeout_s 540
# Writes $OUT/env.txt, charlm.json, torch.json (bench/gpu.py) and epoch.txt (one real seed-big
# epoch through train.py, timed). TINY=1 checks the script on a CPU in a minute or two.
set -uo pipefail
OUT=${OUT:-/tmp/charlm-gpu}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
TEXT=${TEXT:-.gpu-data/wonderland.txt}
[ -f "$TEXT" ] || TEXT=../shared/data/wonderland.txt
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
tiny=${TINY:+--tiny}
{ nvidia-smi -L 2>&1; $PY -c "import jax, jaxlib, flax, optax, torch; print('jax', jax.__version__, jax.devices()); \
print('flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" 2>&1; } > "$OUT/env.txt"
cat "$OUT/env.txt"
# Each framework in its own process, one after the other, so neither holds the GPU's memory for the other.
timeout 300 $PY -m bench.gpu --framework charlm --text "$TEXT" --out "$OUT/charlm.json" $tiny 2>&1 | tee "$OUT/charlm.log" | tail -3
timeout 120 $PY -m bench.gpu --framework torch --text "$TEXT" --out "$OUT/torch.json" $tiny 2>&1 | tee "$OUT/torch.log" | tail -3
# One real epoch of the tutorial's big net (compile included), through the CLI a user runs.
rm -rf /tmp/charlm-gpu-epoch
epoch_args=(--preset seed-big --epochs 1 --text "$TEXT" --ckpt-dir /tmp/charlm-gpu-epoch)
[ -n "$tiny" ] && epoch_args+=(--max-time 0.05)
t0=$($PY -c 'import time; print(time.time())')
timeout 150 $PY train.py "${epoch_args[@]}" 2>&1 | grep -E "^(Epoch|Training|Time budget)" > "$OUT/epoch.txt"
$PY -c "import time; print(f'train.py wall seconds: {time.time() - $t0:.1f}')" >> "$OUT/epoch.txt"
cat "$OUT/epoch.txt"
