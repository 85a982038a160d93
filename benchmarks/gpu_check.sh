#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): peak memory and tokens/s of PDL against TRL's own loss at the GPU
# recipes' model shapes, built with random weights from benchmarks/model_shapes/ (no model hub), plus the loss step.
#
#   bash benchmarks/gpu_check.sh --fetch-wheels   # here, where pip reaches an index: the wheels the GPU image lacks,
#                                                 # into .whl/ (ignored by git; about 60 MB, travels with the tree)
#   bash benchmarks/gpu_check.sh [--out DIR]      # on the GPU machine: about 5 minutes on one H200
#   bash benchmarks/gpu_check.sh --toy --out DIR  # on CPU, tiny shapes, under 2 minutes: checks the plumbing only
#
# Python: .venv/bin/python if there is one; else $PYTHON or python3, with the wheels in .whl/ (if any) installed into
# /tmp/pdl_site first and put ahead of the image's own packages. The repository itself goes on PYTHONPATH, so
# pdl_plugin needs no install. On the device tool: run(command="bash benchmarks/gpu_check.sh --out $OUT",
# carry=[".whl"], timeout_s=540).
set -euo pipefail
cd "$(dirname "$0")/.."

# Versions this check was written and tested against (the project's CPU venv); the GPU image brings torch,
# accelerate, tokenizers, safetensors, pyarrow and the rest.
WHEELS=(trl==1.16.0 transformers==5.24.0 peft==0.21.2 bitsandbytes==0.50.2 datasets==5.2.0 dill==0.4.1
        multiprocess==0.70.19)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    for wheel in "${WHEELS[@]}"; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${GPU_PYTHON_VERSION:-3.12}" \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
            --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform manylinux1_x86_64 -d .whl "$wheel"
    done
    ls -la .whl
    exit 0
fi

if [[ -x .venv/bin/python ]]; then  # the project's own venv (CPU machines here): everything is installed
    PYTHON=.venv/bin/python
else
    PYTHON=${PYTHON:-python3}
    if compgen -G ".whl/*.whl" > /dev/null; then
        echo "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into /tmp/pdl_site"
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/pdl_site .whl/*.whl
        export PYTHONPATH="/tmp/pdl_site${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$PYTHON" benchmarks/gpu_check.py "$@"
