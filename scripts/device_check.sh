#!/usr/bin/env bash
# Everything that needs a GPU, in one run of at most 8 minutes, every result as JSON in OUTDIR.
#
#   bash scripts/device_check.sh OUTDIR            # on a CUDA machine: the full check
#   bash scripts/device_check.sh OUTDIR --dry-run  # anywhere (CPU): the same steps at tiny sizes
#
# It installs nothing and runs from the source tree (PYTHONPATH=.), with the python3 on PATH (or
# $PYTHON). Steps run most important first; each has its own time limit, and once the 8-minute
# budget is near, the remaining steps are recorded as skipped rather than run. A step that fails is
# recorded (rc, log) and the next one runs. OUTDIR/summary.json and OUTDIR/table.md gather it all.
set -u
OUT=${1:?usage: device_check.sh OUTDIR [--dry-run]}
MODE=${2:-}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 FACETRAIN_DEBUG=${FACETRAIN_DEBUG:-0}
PY=${PYTHON:-python3}
BUDGET=${DEVICE_CHECK_BUDGET:-470}  # seconds of the 480 allowed; the summary needs a few
START=$(date +%s)
: >"$OUT/steps.jsonl"

# step NAME LIMIT_SECONDS COMMAND...: runs it with its log in OUTDIR/NAME.log, unless time is short.
step() {
    local name=$1 limit=$2; shift 2
    local left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt 20 ]; then
        echo "{\"step\": \"$name\", \"skipped\": \"the 8-minute budget was spent\"}" >>"$OUT/steps.jsonl"
        echo "== $name: skipped (budget)"; return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s)"
    local began=$(date +%s%N)
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    local ms=$(( ($(date +%s%N) - began) / 1000000 ))
    local took=$((ms / 1000)).$(printf %03d $((ms % 1000)))
    echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $took, \"limit\": $limit}" >>"$OUT/steps.jsonl"
    echo "   rc $rc in ${took}s"; tail -n 3 "$OUT/$name.log" | sed 's/^/   | /'
}

"$PY" - "$OUT/environment.json" <<'EOF'
import json, platform, sys
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "cuda_available": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu_count": __import__("os").cpu_count()}
if torch.cuda.is_available():
    info["bf16"] = torch.cuda.is_bf16_supported()
    info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
major, minor = (int(x) for x in torch.__version__.split(".")[:2])
info["torch_ok"] = (major, minor) >= (2, 4)  # fused SGD, GradScaler("cuda"), set_sync_debug_mode
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info))
EOF
[ $? -eq 0 ] || { echo "device_check: $PY cannot import torch: set PYTHON to the interpreter that has it" >&2; exit 2; }
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$MODE" = "--dry-run" ] || [ "$GPUS" = 0 ]; then
    DRY=1; DEV=cpu; AMPS="off"; NETS="resnet18"; SIZE=32; BATCH=8; STEPS=2; ROUNDS=1; WARM=1; IMAGES=400
    WORKERS=1; BACKEND=gloo; echo "dry run on CPU: tiny sizes"
else
    DRY=0; DEV=cuda; AMPS="bf16 fp16"; NETS="resnet50 resnet101"; SIZE=112; BATCH=256; STEPS=20; ROUNDS=3
    WARM=5; IMAGES=12000; WORKERS=$(( $("$PY" -c "import os; print(os.cpu_count())") - 2 )); BACKEND=nccl
fi
# The face backbones, each at 112 px, batch 256, the first amp (bf16), channels_last, eager, against the
# reference loop on the same architecture (bench_train.py --reference); the dry run takes the same nets.
FACE_NETS="iresnet50 iresnet100 mobilefacenet"
CACHE="$OUT/cache"

bench() {  # bench NAME NET AMP CHANNELS_LAST COMPILE [extra args]
    local name=$1 net=$2 amp=$3 cl=$4 comp=$5; shift 5
    local flag=""; [ "$comp" = on ] && flag=--compile
    step "$name" 150 "$PY" scripts/bench_train.py --device "$DEV" --backbone "$net" --image-size "$SIZE" \
        --batch-size "$BATCH" --amp "$amp" --channels-last "$cl" $flag --steps "$STEPS" --rounds "$ROUNDS" \
        --warmup "$WARM" --json "$OUT/$name.json" "$@"
}

FIRST_AMP=${AMPS%% *}
FIRST_NET=${NETS%% *}
# 1. the headline: r50, bf16, channels_last, eager and compiled, against the reference loop
bench "bench_${FIRST_NET}_${FIRST_AMP}_cl-on_compile-off" "$FIRST_NET" "$FIRST_AMP" on off --reference
bench "bench_${FIRST_NET}_${FIRST_AMP}_cl-on_compile-on" "$FIRST_NET" "$FIRST_AMP" on on --reference
# 1b. the face backbones, the same setting as the headline's eager run
for net in $FACE_NETS; do
    bench "bench_${net}_${FIRST_AMP}_cl-on_compile-off" "$net" "$FIRST_AMP" on off --reference
done
# 2. the input pipeline from a .rec against the synthetic figure
bench "pipeline_${FIRST_NET}_${FIRST_AMP}" "$FIRST_NET" "$FIRST_AMP" on off --pipeline --sources rec \
    --pipeline-images "$IMAGES" --workers "$WORKERS" --cache "$CACHE"
# 3. facetrain itself on the device: the demo config, 2 epochs, then eval and export
DEMO="$OUT/demo_run"
DEMO_SET=(--set "run_dir=$DEMO" --set train.epochs=2 --set "train.device=$DEV")
[ "$DRY" = 1 ] && DEMO_SET+=(--set data.image_size=32 --set model.backbone=resnet18)
step demo_train 120 "$PY" -m facetrain train --config configs/demo.yaml --overwrite "${DEMO_SET[@]}"
step demo_eval 60 "$PY" -m facetrain eval --checkpoint "$DEMO/last.pt" --device "$DEV" --json "$OUT/demo_eval.json"
step demo_export 60 "$PY" -m facetrain export --checkpoint "$DEMO/last.pt" --out "$DEMO/model.pt" \
    --parity-images facetrain/assets/orl
# 4. torch.distributed on the device: one rank, and two where there are two GPUs
DIST_SET=(--config configs/demo.yaml --overwrite --set train.epochs=1 --set "train.device=$DEV")
[ "$DRY" = 1 ] && DIST_SET+=(--set data.image_size=32 --set model.backbone=resnet18)
step "distributed_${BACKEND}_1" 90 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m facetrain \
    train "${DIST_SET[@]}" --set "run_dir=$OUT/dist1"
if [ "$GPUS" -ge 2 ] || [ "$DRY" = 1 ]; then
    step "distributed_${BACKEND}_2" 90 "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m facetrain \
        train "${DIST_SET[@]}" --set "run_dir=$OUT/dist2"
fi
# 5. the GPU tests (they skip on CPU)
step pytest_gpu 120 "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml" tests
# 6. the rest of the matrix, while time lasts
for net in $NETS; do
    for amp in $AMPS; do
        for cl in on off; do
            for comp in off on; do
                name="bench_${net}_${amp}_cl-${cl}_compile-${comp}"
                [ -f "$OUT/$name.json" ] || bench "$name" "$net" "$amp" "$cl" "$comp" --reference
            done
        done
    done
done
rm -rf "$CACHE" "$DEMO"/tensorboard
"$PY" scripts/device_summary.py "$OUT"
echo "device check done in $(( $(date +%s) - START )) s: $OUT/summary.json, $OUT/table.md"
