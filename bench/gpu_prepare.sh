#!/usr/bin/env bash
# Prepare the GPU benchmark kit (.gpu-kit/, ignored by git) for a GPU machine that has Python and
# PyTorch but no internet: what bench/speed.py needs beyond such an image, then run
# `bash bench/gpu_run.sh` there. Run this here, in the repository root, where pip can download.
#
#   bash bench/gpu_prepare.sh [LLAMA_ADAPTER_CHECKOUT]
#
# .gpu-kit/wheels    decord (video), soundfile + cffi + pycparser (audio), ftfy + wcwidth (text):
#                    binary wheels for the target's Python (WHEEL_PYTHON, default 3.12) on x86-64
#                    Linux, without their dependencies (the image has numpy, pillow, ...)
# .gpu-kit/official  the official imagebind_LLM/llama folder, copied from the checkout given
#                    (a working tree, or a git directory without one), for --official; it is
#                    never added to this repository
# .gpu-kit/media     the video speed.py times (writing it needs ffmpeg, which the target may lack;
#                    the other inputs are written there)
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.gpu-kit
PYTHON=${PYTHON:-python3}
WHEEL_PYTHON=${WHEEL_PYTHON:-3.12}
WHEELS=(decord soundfile cffi pycparser ftfy wcwidth)

rm -rf "$KIT/wheels" "$KIT/official"
mkdir -p "$KIT/wheels"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
           manylinux2010_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
echo "wheels for Python $WHEEL_PYTHON: ${WHEELS[*]}"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$WHEEL_PYTHON" \
    --implementation cp "${platforms[@]}" -d "$KIT/wheels" "${WHEELS[@]}"

if [ $# -ge 1 ]; then
    checkout=$1
    mkdir -p "$KIT/official/imagebind_LLM"
    if [ -d "$checkout/imagebind_LLM/llama" ]; then
        cp -r "$checkout/imagebind_LLM/llama" "$KIT/official/imagebind_LLM/"
    elif git --git-dir="$checkout" rev-parse --verify -q HEAD >/dev/null 2>&1; then
        git --git-dir="$checkout" archive HEAD imagebind_LLM/llama | tar -x -C "$KIT/official"
    else
        echo "no imagebind_LLM/llama in $checkout (a LLaMA-Adapter working tree or git directory)" >&2
        exit 2
    fi
    echo "official code: $KIT/official/imagebind_LLM/llama"
else
    echo "no LLaMA-Adapter checkout given: the official generate will not be measured"
fi

rm -rf "$KIT/media" && mkdir -p "$KIT/media"
PYTHONPATH=".:bench${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -c "
from pathlib import Path
from encoders import make_media
make_media(Path('$KIT/media'), ['video'])
"
echo "media: $KIT/media"
du -sh "$KIT"
