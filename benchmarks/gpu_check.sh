#!/usr/bin/env bash
# shellcheck disable=SC2016  # step commands are single-quoted on purpose: they expand in the step
# Issue #17's GPU check in one go (see benchmarks/gpu_check.md): install, GPU tests, bf16 +
# torch.compile training with tokens/s and MFU, NCCL/DDP step, export, quantize, greedy
# tokens on ort-cuda / ort-trt / tensorrt against ort-cpu fp32, decode timings.
#
#   bash benchmarks/gpu_check.sh                      # writes $OUT (default benchmarks/results/gpu)
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh  # print every step's command, run none
#
# Every step runs under its own `timeout`, capped by what is left of GPU_CHECK_BUDGET_S for
# the whole script; a failed step is recorded and the next one runs. $OUT/gpu-check.log
# gets every step's output and timing, $OUT/gpu-check.json (+ .md) the summary, written at
# exit whatever happened. Only those three files go in $OUT (a device run returns <= 8).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

OUT=${OUT:-$REPO/benchmarks/results/gpu}
WORK=${GPU_CHECK_WORK:-/tmp/edgezoo-gpu-check}
BUDGET_S=${GPU_CHECK_BUDGET_S:-540}       # the whole script, installs included
RESERVE_S=20                              # kept back for the summary
DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
BASE_PYTHON=${GPU_CHECK_PYTHON:-python3}  # on the GPU image: the python that holds CUDA torch
SIZE=${GPU_CHECK_SIZE:-small}             # trained, exported, quantized, compared
TRAIN_STEPS=${GPU_CHECK_STEPS:-300}
TRAIN_BATCH=${GPU_CHECK_BATCH:-32}
TRAIN_CONTEXT=${GPU_CHECK_CONTEXT:-1024}
BENCH_SIZE=${GPU_CHECK_BENCH_SIZE-medium} # random-init, decode timing only ("" = none)
TORCH_VERSION=${GPU_CHECK_TORCH:-2.13.0}  # only installed when the base python's torch lacks CUDA
TORCH_INDEX_URL=${GPU_CHECK_TORCH_INDEX_URL:-}  # e.g. a cu12x wheel index; empty: PyPI's default
WHEELS=${GPU_CHECK_WHEELS:-$REPO/.whl}    # offline: wheels carried to the machine
OFFLINE=${GPU_CHECK_OFFLINE:-auto}        # auto (probe the registry) | 1 (never download)
DEVICE=${GPU_CHECK_DEVICE:-cuda}          # cpu: a smoke run of the script's plumbing
COMPILE=${GPU_CHECK_COMPILE:-1}
QUANTIZE_TO=${GPU_CHECK_QUANTIZE:-fp16,int8,int4}  # the trained model's variants
SKIP=${GPU_CHECK_SKIP:-}                  # step names (globs) not to run, e.g. '*-tensorrt-* *-ort-trt-*'

VENV=$WORK/venv
PY=$VENV/bin/python
EZ=$VENV/bin/edgezoo
RES=$WORK/results        # one JSON per result, gathered into gpu-check.json
RUN=$WORK/runs/lm-$SIZE
LOG=$OUT/gpu-check.log
STEPS_TSV=$WORK/steps.tsv
PROMPT='def main(args):
    '
START=$(date +%s)

mkdir -p "$OUT" "$WORK" "$RES"
: >"$LOG"
: >"$STEPS_TSV"
if [[ $DRY_RUN != 1 ]]; then
    rm -f "$RES"/*.json
fi
export EDGEZOO_CACHE=$WORK/cache # tokenizer/data caches and TensorRT engine caches
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export REPO OUT WORK VENV PY EZ RES RUN SIZE PROMPT WHEELS TORCH_VERSION TORCH_INDEX_URL BASE_PYTHON

log() { printf '%s\n' "$*" | tee -a "$LOG"; }
now() { date +%s.%N; }
left() { echo $((BUDGET_S - ($(date +%s) - START))); }

record() { # name status rc seconds budget note
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6//$'\t'/ }" >>"$STEPS_TSV"
}

# step NAME BUDGET_S COMMAND [NEEDS_PATH]: run COMMAND (a bash string; may call the
# functions below) under `timeout min(BUDGET_S, time left)`; never fails the script.
step() {
    local name=$1 budget=$2 cmd=$3 needs=${4:-}
    local avail limit
    avail=$(($(left) - RESERVE_S))
    limit=$((budget < avail ? budget : avail))
    local pattern
    for pattern in $SKIP; do
        # shellcheck disable=SC2053  # a glob on purpose
        if [[ $name == $pattern ]]; then
            log "== $name: skipped (GPU_CHECK_SKIP)"
            record "$name" skipped "" 0 "$budget" "GPU_CHECK_SKIP"
            return 0
        fi
    done
    if [[ $DRY_RUN == 1 ]]; then
        log "[dry-run] $name (budget ${budget}s): $cmd"
        local fn=${cmd%% *}
        if declare -F "$fn" >/dev/null; then declare -f "$fn" | sed 's/^/    /' | tee -a "$LOG"; fi
        record "$name" dry-run "" 0 "$budget" "$cmd"
        return 0
    fi
    if [[ -n $needs && ! -e $needs ]]; then
        log "== $name: skipped, $needs is missing (an earlier step failed)"
        record "$name" skipped "" 0 "$budget" "needs $needs"
        return 0
    fi
    if ((limit < 5)); then
        log "== $name: skipped, out of time (${avail}s left of ${BUDGET_S}s)"
        record "$name" skipped "" 0 "$budget" "out of time"
        return 0
    fi
    log "== $name (timeout ${limit}s of budget ${budget}s, $(($(date +%s) - START))s elapsed) $(date -u +%H:%M:%S)"
    log "\$ $cmd"
    local t0 rc
    t0=$(now)
    set +e
    timeout --kill-after=10 "$limit" bash -c "set -euo pipefail; $cmd" >>"${STEP_OUT:-$LOG}" 2>&1 </dev/null
    rc=$?
    set -e
    local secs status note=""
    secs=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout note="killed after ${limit}s" ;;
        *) status=failed note="exit $rc" ;;
    esac
    log "== $name: $status (rc $rc, ${secs}s)"
    record "$name" "$status" "$rc" "$secs" "$budget" "$note"
}

summary() {
    local elapsed=$(($(date +%s) - START)) py=$PY
    [[ -x $py ]] || py=$BASE_PYTHON
    log "== summary after ${elapsed}s"
    if ! "$py" -m benchmarks.gpu_compare summary --steps "$STEPS_TSV" --results "$RES" \
        --elapsed "$elapsed" --out "$OUT/gpu-check.json" >>"$LOG" 2>&1; then
        # Even without a working python the JSON exists and says so.
        printf '{"error": "summary failed: see gpu-check.log", "elapsed_s": %s}\n' \
            "$elapsed" >"$OUT/gpu-check.json"
    fi
    log "wrote $OUT/gpu-check.json, $OUT/gpu-check.md and $LOG"
}
trap summary EXIT

# ---------------------------------------------------------------- the steps' commands

# A venv that also sees the base python's packages (the GPU image's CUDA torch, onnx, ...)
# through a .pth file: --system-site-packages would skip them when the base is itself a venv.
make_venv() {
    "$BASE_PYTHON" -m venv --clear "$VENV"
    "$BASE_PYTHON" -c 'import sys; print("\n".join(f"import site; site.addsitedir({p!r})" for p in sys.path if p.endswith(("site-packages", "dist-packages"))))' \
        >"$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_base_python.pth"
    "$PY" -c 'import sys; print(sys.version)'
}

registry_reachable() {
    [[ $OFFLINE != 1 ]] || return 1
    timeout 25 "$PY" -m pip download --quiet --no-deps --dest "$WORK/probe" polygraphy >/dev/null 2>&1
}

# Online: CUDA torch (only if the base has none), the extras, then onnxruntime-gpu alone
# (onnxruntime and onnxruntime-gpu share the `onnxruntime` folder: one must go first).
# Offline (the usual GPU image): carried wheels, if any, and edgezoo itself without deps.
install_deps() {
    local pip=("$PY" -m pip install --no-input)
    if registry_reachable; then
        echo "package registry reachable: online install"
        if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
            "${pip[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==$TORCH_VERSION"
        fi
        "${pip[@]}" -c constraints.txt -e ".[all,gpu,tensorrt]"
        "$PY" -m pip uninstall -y onnxruntime onnxruntime-gpu || true
        "${pip[@]}" --no-deps --force-reinstall "onnxruntime-gpu>=1.24"
    else
        echo "no package registry: offline install (wheels from $WHEELS, if any)"
        if compgen -G "$WHEELS/*.whl" >/dev/null; then
            "${pip[@]}" --no-index --no-deps "$WHEELS"/*.whl
        fi
        # The venv's own setuptools (3.11 bundles 65.x) is too old for the PEP 639 license
        # field: let the base's show through; if that fails too, lay the package out by hand.
        "$PY" -m pip uninstall -y -q setuptools 2>/dev/null || true
        "${pip[@]}" --no-deps --no-build-isolation -e . || link_package
    fi
    "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|onnx|onnxruntime|tensorrt|polygraphy|numpy|tokenizers) ' || true
}

# edgezoo without pip: edgezoo/ plus the stage folders under one import name, as
# pyproject's package-dir maps them, and an `edgezoo` launcher.
link_package() {
    echo "editable install failed: linking the package folders instead"
    local pkg=$WORK/pkg/edgezoo f
    rm -rf "$WORK/pkg"
    mkdir -p "$pkg"
    for f in "$REPO"/edgezoo/*; do ln -s "$f" "$pkg/"; done
    ln -s "$REPO/zoo" "$pkg/zoo"
    ln -s "$REPO/export" "$pkg/export"
    ln -s "$REPO/quantize" "$pkg/quantize"
    ln -s "$REPO/runtime" "$pkg/runtime"
    echo "$WORK/pkg" >"$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_edgezoo_linked.pth"
    printf '#!/bin/sh\nexec "%s" -m edgezoo.cli "$@"\n' "$PY" >"$EZ"
    chmod +x "$EZ"
    "$EZ" --version
}

versions() {
    nvidia-smi || echo "nvidia-smi failed"
    "$PY" -m benchmarks.gpu_compare env --out "$RES/env.json"
}

gpu_tests() {
    local files
    mapfile -t files < <(grep -rlE 'mark\.gpu' tests/)
    echo "GPU-marked tests in: ${files[*]}"
    "$PY" -m pytest -m gpu -q -p no:cacheprovider -rA "${files[@]}"
}

train() {
    local compile=()
    if [[ $COMPILE == 1 ]]; then compile=(--compile); fi
    "$EZ" train --family lm --size "$SIZE" --data builtin:stdlib --out "$RUN" \
        --steps "$TRAIN_STEPS" --batch-size "$TRAIN_BATCH" --context "$TRAIN_CONTEXT" \
        --device "$DEVICE" "${compile[@]}" --lr 1e-3 --warmup-steps 30 \
        --log-every 25 --eval-every 100000 --eval-batches 4 \
        --checkpoint-every 100000 --val-frac 0.02 --no-progress
}

# greedy tokens + decode timing of one backend/variant (one process each: a crash in a
# TensorRT build takes only its own case down)
tokens() { # model_dir backend variant [--fp16]
    local dir=$1 backend=$2 variant=$3 fp16=${4:-}
    "$PY" -m benchmarks.gpu_compare tokens "$dir" --backend "$backend" --variant "$variant" \
        ${fp16:+--fp16} --prompt "$PROMPT" --max-new-tokens 32 --bench-tokens 64 --repeats 3 \
        --out "$RES/tokens-$(basename "$dir")-$backend-$variant${fp16:+-fp16}.json"
}

cli_generate() { # backend variant
    "$EZ" generate "$RUN" "$PROMPT" --backend "$1" --variant "$2" --max-new-tokens 32 --no-stream
}

prepare_bench_model() { # a random-init preset, exported and quantized (CPU work)
    "$PY" -c 'import sys; from pathlib import Path; from benchmarks.bench import prepare; print(prepare(sys.argv[1], Path(sys.argv[2])))' \
        "$BENCH_SIZE" "$WORK/bench"
}
export -f make_venv registry_reachable install_deps link_package versions gpu_tests train tokens cli_generate \
    prepare_bench_model
export TRAIN_STEPS TRAIN_BATCH TRAIN_CONTEXT BENCH_SIZE OFFLINE DEVICE COMPILE QUANTIZE_TO

BG_PIDS=()
# step_bg: the same as step, in the background, its output kept apart until wait_bg
step_bg() {
    (
        trap - EXIT
        STEP_OUT="$WORK/bg-$1.out" step "$@"
    ) &
    BG_PIDS+=($!)
}
wait_bg() {
    local pid
    for pid in "${BG_PIDS[@]}"; do wait "$pid" || true; done
    BG_PIDS=()
    if compgen -G "$WORK/bg-*.out" >/dev/null; then
        cat "$WORK"/bg-*.out >>"$LOG"
        rm -f "$WORK"/bg-*.out
    fi
}

# ---------------------------------------------------------------- the run

log "edgezoo GPU check: $(git rev-parse --short HEAD 2>/dev/null || echo '?') on $(hostname), budget ${BUDGET_S}s, out $OUT"

step venv 40 make_venv
step install 240 install_deps "$PY"
step versions 30 versions "$PY"
step pytest-gpu 180 gpu_tests "$EZ"

step train 180 train "$EZ"
step mfu 15 '"$PY" -m benchmarks.gpu_compare mfu "$RUN" --context "$TRAIN_CONTEXT" --batch-size "$TRAIN_BATCH" --out "$RES/train.json"' "$RUN/training.jsonl"
step ddp-nccl 60 '"$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m benchmarks.gpu_torch ddp-step --size "$SIZE" --steps 5 --out "$RES/ddp.json"' "$PY"

# The bigger random-init model for decode timing is CPU work (export, quantize): build it
# in the background while the trained model is exported, quantized and compared.
if [[ -n $BENCH_SIZE ]]; then
    BENCH_DIR=$WORK/bench/lm-$BENCH_SIZE
    export BENCH_DIR
    step_bg "bench-prepare-$BENCH_SIZE" 200 prepare_bench_model "$PY"
fi

step export 120 '"$EZ" export "$RUN" --greedy-steps 16' "$RUN/model.safetensors"
step quantize 150 '"$EZ" quantize "$RUN" --to "$QUANTIZE_TO" --speed-rounds 1' "$RUN/onnx/manifest.json"
step quantize-trt-int8 90 '"$EZ" quantize "$RUN" --to int8-static --for tensorrt --calibration-samples 8 --speed-rounds 1' "$RUN/onnx/manifest.json"

# `edgezoo generate` itself on each GPU path (builds the TensorRT engines, cached for below)
step generate-ort-cpu-fp32 30 'cli_generate ort-cpu fp32' "$RUN/onnx/manifest.json"
step generate-ort-cuda-fp32 45 'cli_generate ort-cuda fp32' "$RUN/onnx/manifest.json"
step generate-ort-trt-fp16 90 'cli_generate ort-trt fp16' "$RUN/onnx/manifest.json"
step generate-ort-trt-int8 90 'cli_generate ort-trt int8' "$RUN/onnx/manifest.json"
step generate-tensorrt-fp32 90 'cli_generate tensorrt fp32' "$RUN/onnx/manifest.json"

# greedy tokens vs ort-cpu fp32, and decode ms/token, per backend × variant
step tokens-ort-cpu-fp32 45 'tokens "$RUN" ort-cpu fp32' "$RUN/onnx/manifest.json"
step tokens-ort-cuda-fp32 45 'tokens "$RUN" ort-cuda fp32' "$RUN/onnx/manifest.json"
step tokens-ort-cuda-fp16 45 'tokens "$RUN" ort-cuda fp16' "$RUN/onnx/manifest.json"
step tokens-ort-cuda-int4 45 'tokens "$RUN" ort-cuda int4' "$RUN/onnx/manifest.json"
step tokens-ort-trt-fp16 60 'tokens "$RUN" ort-trt fp16' "$RUN/onnx/manifest.json"
step tokens-ort-trt-int8 60 'tokens "$RUN" ort-trt int8' "$RUN/onnx/manifest.json"
step tokens-tensorrt-fp32 60 'tokens "$RUN" tensorrt fp32' "$RUN/onnx/manifest.json"
step tokens-tensorrt-fp16 90 'tokens "$RUN" tensorrt fp32 --fp16' "$RUN/onnx/manifest.json"
step eager-bf16 45 '"$PY" -m benchmarks.gpu_torch eager-decode "$RUN" --out "$RES/eager-$(basename "$RUN").json"' "$RUN/model.safetensors"

# decode timing at a bigger random-init size (python -m benchmarks.bench times ort-cpu
# only, so the GPU backends are timed here with the same runtime.timing.time_decode)
wait_bg
if [[ -n $BENCH_SIZE ]]; then
    step "bench-$BENCH_SIZE-ort-cuda-fp32" 45 'tokens "$BENCH_DIR" ort-cuda fp32' "$BENCH_DIR/onnx/manifest.json"
    step "bench-$BENCH_SIZE-ort-cuda-int4" 45 'tokens "$BENCH_DIR" ort-cuda int4' "$BENCH_DIR/onnx/manifest.json"
    step "bench-$BENCH_SIZE-ort-trt-fp16" 90 'tokens "$BENCH_DIR" ort-trt fp32 --fp16' "$BENCH_DIR/onnx/manifest.json"
    step "bench-$BENCH_SIZE-tensorrt-fp16" 90 'tokens "$BENCH_DIR" tensorrt fp32 --fp16' "$BENCH_DIR/onnx/manifest.json"
    step "bench-$BENCH_SIZE-eager-bf16" 45 '"$PY" -m benchmarks.gpu_torch eager-decode "$BENCH_DIR" --out "$RES/eager-$(basename "$BENCH_DIR").json"' "$BENCH_DIR/model.safetensors"
fi
