#!/usr/bin/env bash
# Run bench/speed.py on a GPU machine without internet, from the kit bench/gpu_prepare.sh made
# (.gpu-kit/). One part per call keeps each run short:
#
#   bash bench/gpu_run.sh small [speed.py options]   # the default model: ~ minutes
#   bash bench/gpu_run.sh 7b [speed.py options]      # the 7B shape, + the official generate if in the kit
#
# Results go to $OUT (default bench-results/): speed-PART.json and speed-PART.log.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.gpu-kit
PART=${1:?"which part: small or 7b"}
shift
case "$PART" in small|7b) ;; *) echo "unknown part $PART (small, 7b)" >&2; exit 2 ;; esac
PYTHON=${PYTHON:-python3}
RESULTS=${OUT:-bench-results}
mkdir -p "$RESULTS"

if ls "$KIT"/wheels/*.whl >/dev/null 2>&1; then
    site=$(mktemp -d)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$KIT"/wheels/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
official=()
if [ "$PART" = 7b ] && [ -d "$KIT/official" ]; then
    official=(--official "$KIT/official")
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
set -o pipefail
"$PYTHON" bench/speed.py --models "$PART" --media "$KIT/media" ${official[@]+"${official[@]}"} \
    --json "$RESULTS/speed-$PART.json" "$@" 2>&1 | tee "$RESULTS/speed-$PART.log"
