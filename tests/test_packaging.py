"""The package's requirements install where the users are: beside Axolotl 0.19's exact pins, with the TRL host's newer
versions in the `[trl]` extra and the evaluation tools out of the core. Reads pyproject.toml and the sources only:
fast, no network, no install. The real install into an Axolotl environment is proven by .ci/axolotl (versions of every
package before/after `pip install -e ".[axolotl,...]"`, and `pip check`)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]

# Axolotl 0.19.0's pins on the packages we share with it, from its wheel's METADATA (`Requires-Dist`, PyPI release
# axolotl==0.19.0; e.g. `importlib.metadata.requires("axolotl")` in the Axolotl venv). torch is a range there.
AXOLOTL_0_19_PINS = {
    "transformers": "5.16.1",
    "trl": "1.9.0",
    "peft": "0.20.0",
    "accelerate": "1.13.0",
    "datasets": "4.8.4",
    "pydantic": "2.12.5",
    "pyyaml": "6.0.3",
    "bitsandbytes": "0.50.2",
    "huggingface-hub": "1.17.0",
    "tokenizers": "0.23.1",
    "packaging": "26.0",
    "typing-extensions": "4.15.0",
}
AXOLOTL_0_19_TORCH = ("2.11.0", "2.13.0")  # torch>=2.11.0,<=2.13.0: both ends must be allowed
# Axolotl 0.21.0 (Python >= 3.12), the same way; torch>=2.13.0,<2.15.0.
AXOLOTL_0_21_PINS = {
    "transformers": "5.20.1",
    "trl": "1.14.1",
    "peft": "0.21.2",
    "accelerate": "1.15.0",
    "datasets": "5.0.1",
    "pydantic": "2.13.5",
    "pyyaml": "6.0.3",
    "bitsandbytes": "0.50.2",
    "tokenizers": "0.23.3",
    "packaging": "26.0",
    "typing-extensions": "4.15.0",
}
AXOLOTL_0_21_TORCH = ("2.13.0", "2.14.1")
AXOLOTL_RELEASES = {"0.19": (AXOLOTL_0_19_PINS, AXOLOTL_0_19_TORCH), "0.21": (AXOLOTL_0_21_PINS, AXOLOTL_0_21_TORCH)}
# What scripts/setup_axolotl.sh installs beside Axolotl; [trl] is the one extra that cannot go there.
AXOLOTL_SIDE_EXTRAS = ("axolotl", "embedded", "eval", "dev")

# Import name -> distribution name, where they differ.
DIST_OF_IMPORT = {"yaml": "pyyaml", "rouge_score": "rouge-score", "chatterbot_corpus": "chatterbot-corpus"}
# Imported but deliberately not a requirement: the host itself (see the comment on the [axolotl] extra).
UNDECLARED_IMPORTS = {"axolotl"}


def _project() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _reqs(strings) -> dict[str, Requirement]:
    reqs = [Requirement(s) for s in strings]
    return {canonicalize_name(r.name): r for r in reqs}


def _core() -> dict[str, Requirement]:
    return _reqs(_project()["dependencies"])


def _extra(name: str) -> dict[str, Requirement]:
    return _reqs(_project()["optional-dependencies"][name])


def _allows(req: Requirement, version: str) -> bool:
    return req.specifier.contains(Version(version), prereleases=True)


def _check_against_axolotl(reqs: dict[str, Requirement], where: str) -> None:
    for release, (pins, torch_range) in AXOLOTL_RELEASES.items():
        for name, req in reqs.items():
            if name in pins:
                assert _allows(req, pins[name]), f"{where}: {req} refuses Axolotl {release}'s {name}=={pins[name]}"
            if name == "torch":
                for v in torch_range:
                    assert _allows(req, v), f"{where}: {req} refuses torch {v}, inside Axolotl {release}'s range"
            assert name != "axolotl", f"{where}: axolotl must not be a requirement (see the [axolotl] extra's comment)"


def test_core_installs_beside_axolotl_pins():
    _check_against_axolotl(_core(), "core")


@pytest.mark.parametrize("extra", AXOLOTL_SIDE_EXTRAS)
def test_axolotl_side_extras_install_beside_axolotl_pins(extra):
    _check_against_axolotl(_extra(extra), f"[{extra}]")


def test_core_has_lower_bounds_only():
    for req in _core().values():
        ops = {s.operator for s in req.specifier}
        assert ops <= {">="}, f"core requirement {req}: only lower bounds belong in the core"


def test_trl_host_versions_only_in_trl_extra():
    core, trl = _core(), _extra("trl")
    assert "trl" not in core
    assert _allows(core["transformers"], "5.16.1")
    assert _allows(trl["trl"], "1.16.0") and not _allows(trl["trl"], "1.15.9") and not _allows(trl["trl"], "2.0.0")
    assert _allows(trl["transformers"], "5.24.0") and not _allows(trl["transformers"], "5.23.9")
    for extra in _project()["optional-dependencies"]:
        if extra != "trl":
            assert "trl" not in _extra(extra), f"trl in [{extra}]"


def test_eval_tools_are_not_core():
    core, eval_ = _core(), _extra("eval")
    for name in ("rouge-score", "matplotlib"):
        assert name not in core, f"{name} is only for evaluation and plots, not training"
        assert name not in _extra("axolotl")
        assert name in eval_


def test_eval_tools_are_imported_lazily():
    """rouge_score and matplotlib are imported inside functions only, so that training runs without the [eval] extra."""
    for path in sorted((ROOT / "pdl_plugin").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:  # module level only; imports inside a def are lazy
            for name in _imported_roots(node):
                assert name not in ("rouge_score", "matplotlib"), f"{path.relative_to(ROOT)} imports {name} at load"


def _imported_roots(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name.split(".")[0] for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module.split(".")[0]]
    if isinstance(node, (ast.If, ast.Try)):  # `if TYPE_CHECKING:` / try-except ImportError at module level
        return [n for child in ast.iter_child_nodes(node) for n in _imported_roots(child)]
    return []


def test_every_third_party_import_is_declared():
    declared = set(_core())
    for extra in _project()["optional-dependencies"]:
        declared |= set(_extra(extra))
    missing = {}
    for path in sorted((ROOT / "pdl_plugin").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for name in _imported_roots(node) if isinstance(node, (ast.Import, ast.ImportFrom)) else []:
                if name in sys.stdlib_module_names or name == "pdl_plugin" or name in UNDECLARED_IMPORTS:
                    continue
                if canonicalize_name(DIST_OF_IMPORT.get(name, name)) not in declared:
                    missing.setdefault(name, str(path.relative_to(ROOT)))
    assert not missing, f"imported but not in pyproject.toml's dependencies or extras: {missing}"


@pytest.mark.parametrize(
    ("script", "extras"),
    [("scripts/setup.sh", {"trl", "embedded", "eval", "dev"}), ("scripts/setup_axolotl.sh", set(AXOLOTL_SIDE_EXTRAS))],
)
def test_setup_scripts_install_existing_extras(script, extras):
    """pip only warns about an extra the package lacks, so a renamed extra would silently install less."""
    text = (ROOT / script).read_text()
    installs = re.findall(r'-e "\.\[([a-z,]+)\]"', text)
    assert [set(i.split(",")) for i in installs] == [extras]
    assert extras <= set(_project()["optional-dependencies"])
    line = next(ln for ln in text.splitlines() if '-e ".[' in ln)
    assert "--no-deps" not in line, f"{script} must install pdl-plugin with its dependencies"
