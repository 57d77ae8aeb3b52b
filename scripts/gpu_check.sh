#!/usr/bin/env bash
# The one GPU check: install what is missing without network, then the CUDA tests, the bench and
# the Figure 6 sweep in one run (benchmarks/gpu_check.py says what and why). From anywhere:
#
#   bash scripts/gpu_check.sh --data .device/cifar10-jpeg.tar.xz [--budget-s 500] [--out DIR] [--work DIR]
#   bash scripts/gpu_check.sh --cpu-smoke [--data ARCHIVE]        # the same phases, tiny, on a CPU
#
# Outputs go to --out (default gpu-check-out/ in the current folder): gpu_check.json, gpu_check.log,
# gpu_check.tar.gz; the runs to --work (default OUT/work). On a lent device machine, where only
# what is under $OUT comes back: --out "$OUT" --work gpu-check-out/work. Missing Python packages
# (omegaconf on a bare GPU image) are installed from the wheels in .whl/ (pip download ... -d .whl
# omegaconf==2.4.0, see docs/gpu.md) into /tmp/site; the package itself is imported
# from the repository (no pip install -e, which could need the network for its build backend).
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
SITE="${GPU_CHECK_SITE:-/tmp/site}"
t0=$(date +%s)

if ! "$PY" -c "import omegaconf, yaml" 2>/dev/null; then
    shopt -s nullglob
    wheels=("$REPO"/.whl/*.whl)
    if [ ${#wheels[@]} -eq 0 ]; then
        echo "error: omegaconf is not installed and .whl/ holds no wheels to install it from (see docs/gpu.md)" >&2
        exit 2
    fi
    echo "installing ${wheels[*]} into $SITE (no network)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" || exit 2
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import omegaconf, pytest, pytorch_lightning, torchmetrics, torchvision, matplotlib, reproduce" || {
    echo "error: a package the check needs does not import (above)" >&2; exit 2; }
echo "install and import check: $(( $(date +%s) - t0 )) s"
exec "$PY" "$REPO/benchmarks/gpu_check.py" "$@"
