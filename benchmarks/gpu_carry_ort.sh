#!/usr/bin/env bash
# Pack onnxruntime-gpu for a lent GPU machine that reaches no package registry and takes at
# most 64 MiB per call (see benchmarks/gpu_check.md): the wheel's package as one tar.xz, cut
# into pieces .gw1/p .. .gwN/p under the repository (ignored by git). Each device call
# carries one piece and copies it to /tmp/gw (a carried folder is gone at the next call);
# the last call joins them, unpacks to /tmp/ortgpu and puts that first on PYTHONPATH.
#
#   bash benchmarks/gpu_carry_ort.sh [VERSION] [PYTHON]   # default 1.31.1 (CUDA 13), 3.12
set -euo pipefail
VERSION=${1:-1.31.1}
PYVER=${2:-3.12}
PIECE_MB=${GPU_CARRY_PIECE_MB:-52}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 -d "$WORK" "onnxruntime-gpu==$VERSION"
mkdir "$WORK/pkg"
(cd "$WORK/pkg" && unzip -q "$WORK"/onnxruntime_gpu-*.whl)
tar -C "$WORK/pkg" -cf - . | xz -T0 -6 >"$WORK/ort.tar.xz"
(cd "$WORK" && split -b "${PIECE_MB}M" -d ort.tar.xz piece)

rm -rf "$REPO"/.gw[0-9]*
n=0
for piece in "$WORK"/piece*; do
    n=$((n + 1))
    mkdir -p "$REPO/.gw$n"
    mv "$piece" "$REPO/.gw$n/p"
    grep -qx "/.gw$n/" "$REPO/.git/info/exclude" 2>/dev/null || echo "/.gw$n/" >>"$REPO/.git/info/exclude"
done
echo "onnxruntime-gpu $VERSION: $(du -h "$WORK/ort.tar.xz" | cut -f1) in $n pieces (.gw1 .. .gw$n)."
echo "Device calls, one after another (the machine stays warm 30 s between calls):"
for i in $(seq 1 $((n - 1))); do
    echo "  carry [\".gw$i\"]: mkdir -p /tmp/gw && cp .gw$i/p /tmp/gw/p$i"
done
parts=$(for i in $(seq 1 $((n - 1))); do printf '/tmp/gw/p%s ' "$i"; done)
echo "  carry [\".gw$n\"]: mkdir -p /tmp/ortgpu && cat ${parts}.gw$n/p | xz -dc | tar x -C /tmp/ortgpu && export PYTHONPATH=/tmp/ortgpu; GPU_CHECK_OFFLINE=1 GPU_CHECK_SKIP='quantize-trt-int8 *-ort-trt-* *tensorrt*' bash benchmarks/gpu_check.sh"
