#!/usr/bin/env bash
# The GPU machine's checks and figures in one call, inside 9 minutes, every figure written to $OUT.
#
#   bench/gpu_check.sh           on the GPU machine (one device command with timeout_s 600; carry .whl if a
#                                cripser wheel was downloaded there, see BENCHMARKS.md)
#   bench/gpu_check.sh --tiny    on any machine, on the CPU, toy sizes: checks this script itself (run by
#                                tests/test_gpu_path.py); its numbers mean nothing
#
# Steps (each under `timeout`, its log in $OUT/<step>.log, one line per step in $OUT/summary.txt):
#   wheel    install a carried cripser wheel from .whl/ (if any) into a private folder on PYTHONPATH
#   info     the card, cores, /dev/shm, torch / torchvision / numba / cripser versions -> $OUT/info.json
#   smoke    a short on-the-fly pretraining (pretraining.py) on the device
#   ddp      a 2-process DDP start (-ws 2 -p gloo: one GPU cannot hold two NCCL ranks), and, with one GPU,
#            the refusal of two NCCL ranks on it (expected: exit 1 with a one-line error)
#   weights  the smoke run's weights and checkpoint load with plain torch.load(weights_only=True), CUDA hidden
#   bench    bench/gpu_bench.py --device cuda with a deadline from the time left -> $OUT/gpu_bench.json
# $OUT defaults to ./gpu_check_out when unset.  Exit status: 0 when every step passed, 1 otherwise.
set -u

TINY=0
if [ "${1:-}" = "--tiny" ]; then
    TINY=1
elif [ $# -gt 0 ]; then
    echo "usage: bench/gpu_check.sh [--tiny]" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
OUT=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT" || exit 2
# 9 minutes on the device (a device command may run 10); --tiny on a shared CPU gets longer (no deadline there)
if [ "$TINY" = 1 ]; then BUDGET=${GPU_CHECK_SECONDS:-1500}; else BUDGET=${GPU_CHECK_SECONDS:-540}; fi
START=$(date +%s)
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
: > "$OUT/summary.txt"
FAILED=0

left() { echo $((BUDGET - ($(date +%s) - START))); }

# step NAME SECONDS EXPECT CMD...: run CMD with at most SECONDS (and never past the budget), log to
# $OUT/NAME.log; EXPECT is 0 (must succeed) or 1 (must fail: a refusal being checked)
step() {
    local name=$1 secs=$2 expect=$3
    shift 3
    local room
    room=$(left)
    if [ "$room" -lt 10 ]; then
        echo "$name: skipped (budget spent)" | tee -a "$OUT/summary.txt"
        FAILED=1
        return
    fi
    [ "$secs" -gt "$room" ] && secs=$room
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=5 "$secs" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    local took=$(($(date +%s) - t0)) verdict=ok
    if [ "$expect" = 0 ] && [ "$rc" != 0 ]; then verdict=FAILED; fi
    if [ "$expect" = 1 ] && { [ "$rc" = 0 ] || [ "$rc" -ge 124 ]; }; then verdict=FAILED; fi
    [ "$verdict" = FAILED ] && FAILED=1
    echo "$name: $verdict (exit $rc, ${took} s)" | tee -a "$OUT/summary.txt"
    if [ "$verdict" = FAILED ]; then tail -n 5 "$OUT/$name.log" | sed 's/^/    /'; fi
}

# -- wheel
if ls "$ROOT"/.whl/*.whl > /dev/null 2>&1; then
    SITE=$(mktemp -d /tmp/gpu_check_site.XXXXXX)
    step wheel 60 0 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
        "$ROOT"/.whl/*.whl
    export PYTHONPATH="$PYTHONPATH:$SITE"
else
    echo "wheel: none carried in .whl/ (cripser: whatever is installed)" | tee -a "$OUT/summary.txt"
fi

# -- info
if [ "$TINY" = 1 ]; then DEVICE=cpu; else DEVICE=cuda; fi
step info 60 0 "$PY" - "$OUT/info.json" "$DEVICE" << 'EOF'
import json, os, platform, shutil, sys
import torch, torchvision
info = dict(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__,
            cuda=torch.version.cuda, cores=os.cpu_count(), load_average=list(os.getloadavg()))
try:
    info['usable_cores'] = len(os.sched_getaffinity(0))
except AttributeError:
    pass
for mod in ('numba', 'numpy', 'scipy', 'skimage', 'sklearn', 'cripser'):
    try:
        info[mod] = __import__(mod).__version__
    except Exception as e:
        info[mod] = f'not importable: {type(e).__name__}'
shm = shutil.disk_usage('/dev/shm') if os.path.isdir('/dev/shm') else None
info['dev_shm_gib'] = round(shm.total / 2**30, 1) if shm else None
info['cuda_available'] = torch.cuda.is_available()
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device_name=p.name, device_count=torch.cuda.device_count(), memory_gib=round(p.total_memory / 2**30, 1),
                capability=f'{p.major}.{p.minor}', bf16=torch.cuda.is_bf16_supported())
from util.train.distributed import default_workers
info['default_workers'] = default_workers()
with open(sys.argv[1], 'w') as f:
    json.dump(info, f, indent=1)
print(json.dumps(info))
if sys.argv[2] == 'cuda' and not torch.cuda.is_available():
    sys.exit('error: no CUDA device visible')
EOF

# -- smoke: a short on-the-fly pretraining on the device
if [ "$TINY" = 1 ]; then
    SIZE=(--img_size 48 --crop_size 32 -b 8 -n 16 -nv 8 -nw 0 -nc 20)
    SMOKE_S=240
else
    SIZE=(-b 128 -n 2048 -nv 256)
    SMOKE_S=120
fi
step smoke "$SMOKE_S" 0 "$PY" pretraining.py -o "$OUT/smoke" -u resnet18 -e 1 --device "$DEVICE" "${SIZE[@]}"

# -- ddp: two processes (gloo on one device); with one GPU, two NCCL ranks must be refused in one line
step ddp "$SMOKE_S" 0 "$PY" pretraining.py -o "$OUT/ddp" -u resnet18 -e 1 --device "$DEVICE" -ws 2 -p gloo "${SIZE[@]}"
if [ "$TINY" = 0 ]; then
    GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2> /dev/null || echo 0)
    if [ "$GPUS" = 1 ]; then
        step nccl_refused 60 1 "$PY" pretraining.py -o "$OUT/nccl" -u resnet18 -e 1 --device cuda -ws 2 "${SIZE[@]}"
        grep -q '^error: .*-p gloo' "$OUT/nccl_refused.log" || { echo "nccl_refused: FAILED (no one-line error)" |
            tee -a "$OUT/summary.txt"; FAILED=1; }
    fi
fi

# -- weights: load the smoke run's files on a CPU-only view of the machine
step weights 60 0 env CUDA_VISIBLE_DEVICES= "$PY" - "$OUT/smoke" << 'EOF'
import glob, os, sys
import torch
assert not torch.cuda.is_available()
files = sorted(glob.glob(os.path.join(sys.argv[1], '*', '*.pth')))
assert files, 'no weights or checkpoint from the smoke run'
for f in files:
    obj = torch.load(f, weights_only=True)
    print(f'{os.path.basename(f)}: {len(obj)} entries, loaded on the CPU with weights_only=True')
EOF

# -- bench: the throughput and accuracy figures, with what is left of the budget
if [ "$TINY" = 1 ]; then
    step bench 400 0 "$PY" bench/gpu_bench.py --tiny --device cpu --stages ceiling pipeline --json "$OUT/gpu_bench.json"
else
    DEADLINE=$(($(left) - 25))
    step bench $((DEADLINE + 20)) 0 "$PY" bench/gpu_bench.py --device cuda --deadline "$DEADLINE" --json "$OUT/gpu_bench.json"
fi

echo "total: $(($(date +%s) - START)) s of a ${BUDGET} s budget; figures in $OUT" | tee -a "$OUT/summary.txt"
exit $FAILED
