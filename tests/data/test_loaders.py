"""Embedded data sets: format, determinism, no train/validation overlap, dedup, caching, errors."""

from __future__ import annotations

import ast
import shutil
import sysconfig
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pdl_plugin.data import cache, code, dialogue, summarization
from pdl_plugin.data.cache import EmbeddedResourceError, atomic_dir, cache_dir
from pdl_plugin.data.code import load_code
from pdl_plugin.data.dialogue import conversation_to_messages, load_dialogue
from pdl_plugin.data.registry import EMBEDDED_DATASETS, resolve_embedded_dataset
from pdl_plugin.data.summarization import load_summarization, parse_translation

FIXTURE = Path(__file__).parent / "fixtures" / "Translation-en"
STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PDL_PLUGIN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def stdlib_code(tmp_path_factory):
    """One full standard-library build, shared by the code tests (a few seconds)."""
    root = tmp_path_factory.mktemp("code-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PDL_PLUGIN_CACHE", str(root))
        return SimpleNamespace(root=root, splits=load_code())


def rows(splits):
    return {part: splits[part].to_list() for part in ("train", "validation")}


def assert_disjoint(splits, key):
    train = {" ".join(key(r).lower().split()) for r in splits["train"]}
    validation = {" ".join(key(r).lower().split()) for r in splits["validation"]}
    assert train and validation and not train & validation


# --- cache -----------------------------------------------------------------------------


def test_cache_dir_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("PDL_PLUGIN_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("a", "b") == tmp_path / "explicit" / "a" / "b"
    monkeypatch.delenv("PDL_PLUGIN_CACHE")
    assert cache_dir("a") == tmp_path / "xdg" / "pdl_plugin" / "a"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "pdl_plugin"


def test_atomic_dir_leaves_nothing_when_the_build_fails(tmp_path):
    target = tmp_path / "built"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "whole.txt").write_text("whole")
    assert [p.name for p in tmp_path.iterdir()] == ["built"]
    assert (target / "whole.txt").read_text() == "whole"


def test_atomic_dir_keeps_the_first_complete_build(tmp_path):
    target = tmp_path / "built"
    with atomic_dir(target) as slow:
        (slow / "mine.txt").write_text("slow")
        with atomic_dir(target) as fast:
            (fast / "theirs.txt").write_text("fast")
    assert [p.name for p in target.iterdir()] == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["built"]


def test_bad_split_arguments_are_refused():
    with pytest.raises(ValueError, match="validation_fraction"):
        load_dialogue(validation_fraction=1.0)
    with pytest.raises(ValueError, match="max_records"):
        load_dialogue(max_records=0)


# --- dialogue --------------------------------------------------------------------------


def test_conversation_to_messages_alternates_and_ends_with_assistant():
    assert conversation_to_messages(["Q?", " A. ", 3, "", "Q2?"]) == [
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": "A."},
    ]
    assert conversation_to_messages(["only a question"]) == []


def test_dialogue_format_split_and_dedup():
    splits = load_dialogue()
    assert len(splits["train"]) > 700 and len(splits["validation"]) > 50
    assert splits["train"].column_names == ["messages"]
    seen = set()
    for part in ("train", "validation"):
        for record in splits[part]:
            messages = record["messages"]
            assert len(messages) >= 2 and len(messages) % 2 == 0
            assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
            assert all(isinstance(m["content"], str) and m["content"].strip() for m in messages)
            key = tuple(" ".join(m["content"].lower().split()) for m in messages)
            assert key not in seen
            seen.add(key)
    assert_disjoint(splits, lambda r: r["messages"][0]["content"])


def test_dialogue_is_deterministic_and_cached(private_cache, monkeypatch, tmp_path):
    first = rows(load_dialogue())
    monkeypatch.setattr(dialogue, "_build", lambda files: pytest.fail("rebuilt despite the cache"))
    start = time.perf_counter()
    assert rows(load_dialogue()) == first
    assert time.perf_counter() - start < 1.0
    monkeypatch.undo()
    monkeypatch.setenv("PDL_PLUGIN_CACHE", str(tmp_path / "other-cache"))
    assert rows(load_dialogue()) == first


def test_max_records_caps_each_split():
    full, capped = load_dialogue(), load_dialogue(max_records=7)
    assert len(capped["train"]) == len(capped["validation"]) == 7
    assert capped["train"].to_list() == full["train"].select(range(7)).to_list()


def test_missing_chatterbot_corpus_names_the_install_command(monkeypatch):
    monkeypatch.setattr(dialogue.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EmbeddedResourceError, match="pip install --no-deps chatterbot-corpus==1.3.3"):
        load_dialogue()


# --- summarization (parser on a hand-made index: no network) ---------------------------


def test_parse_translation_reads_debian_description_conventions():
    entries = {package: (synopsis, long) for package, synopsis, long in parse_translation(FIXTURE.read_text())}
    assert "no-description" not in entries
    synopsis, long = entries["brisk-tar"]
    assert synopsis == "fast archiver for many small files"
    assert long.startswith("Brisk Tar packs directories that hold very many small files into a single archive,")
    assert "\n\nSupported features:\n * parallel reading with a configurable number of threads\n * zstd" in long
    assert long.endswith("interrupted archive\n\nThis package contains the command-line program.")


def test_summarization_records_from_a_translation_file():
    splits = load_summarization(translation_files=[FIXTURE], validation_fraction=0.5)
    records = splits["train"].to_list() + splits["validation"].to_list()
    assert splits["train"].column_names == ["prompt", "completion"]
    # 11 packages: 3 share one description, one is too short, one has none.
    assert len(records) == 8
    assert sum("Aurora Clock" in r["prompt"] for r in records) == 1
    assert not any("tiny icon font" in r["prompt"] for r in records)
    for record in records:
        assert record["prompt"].startswith("Summarize") and record["prompt"].endswith("Summary:")
        assert record["completion"].startswith(" ") and "\n" not in record["completion"]
    assert_disjoint(splits, lambda r: r["prompt"])


def test_summarization_is_deterministic_and_cached(monkeypatch, tmp_path):
    first = rows(load_summarization(translation_files=[FIXTURE], validation_fraction=0.5))
    monkeypatch.setattr(summarization, "_build", lambda *args: pytest.fail("rebuilt despite the cache"))
    assert rows(load_summarization(translation_files=[FIXTURE], validation_fraction=0.5)) == first
    monkeypatch.undo()
    monkeypatch.setenv("PDL_PLUGIN_CACHE", str(tmp_path / "other-cache"))
    assert rows(load_summarization(translation_files=[str(FIXTURE)], validation_fraction=0.5)) == first


@pytest.mark.skipif(not Path(summarization.APT_HELPER).is_file(), reason="needs apt's apt-helper")
def test_compressed_translation_files_are_read_through_apt(tmp_path):
    import gzip

    packed = tmp_path / "Translation-en.gz"
    packed.write_bytes(gzip.compress(FIXTURE.read_bytes()))
    plain = load_summarization(translation_files=[FIXTURE], validation_fraction=0.5)
    assert rows(load_summarization(translation_files=[packed], validation_fraction=0.5)) == rows(plain)


def test_summarization_without_apt_names_the_alternatives(monkeypatch):
    monkeypatch.setattr(summarization.shutil, "which", lambda name: None)
    with pytest.raises(EmbeddedResourceError, match="apt-get.*translation_files"):
        load_summarization()


@pytest.mark.parametrize("fake_apt_get", ["false", "true"])
def test_failed_apt_update_leaves_no_cache(fake_apt_get, monkeypatch, private_cache):
    """A failing or empty `apt-get update` must raise, and not cache an empty list folder."""
    command = shutil.which(fake_apt_get)
    monkeypatch.setattr(summarization.shutil, "which", lambda name: command)
    with pytest.raises(EmbeddedResourceError, match=r"fetched no English package descriptions.*network access"):
        load_summarization()
    assert not (private_cache / "apt-lists").exists()
    assert list(private_cache.iterdir()) == []


# --- code ------------------------------------------------------------------------------


def test_code_records_are_valid_python_split_by_prompt(stdlib_code):
    splits = stdlib_code.splits
    assert len(splits["train"]) > 2500 and len(splits["validation"]) > 200
    assert splits["train"].column_names == ["prompt", "completion"]
    bodies = set()
    for part in ("train", "validation"):
        for record in splits[part]:
            prompt, completion = record["prompt"], record["completion"]
            function = ast.parse(prompt + completion).body[0]
            assert isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
            assert len(ast.get_docstring(function).split()) >= 5
            assert completion.startswith("\n") and 3 <= sum(map(bool, map(str.strip, completion.split("\n")))) <= 30
            assert completion not in bodies
            bodies.add(completion)
    assert_disjoint(splits, lambda r: r["prompt"])


def test_code_cached_load_is_fast_and_equal(stdlib_code, monkeypatch):
    monkeypatch.setenv("PDL_PLUGIN_CACHE", str(stdlib_code.root))
    monkeypatch.setattr(code, "_build", lambda files: pytest.fail("rebuilt despite the cache"))
    start = time.perf_counter()
    again = load_code()
    assert time.perf_counter() - start < 2.0
    assert rows(again) == rows(stdlib_code.splits)


def test_code_mining_is_deterministic_and_skips_tests(tmp_path, monkeypatch):
    source = tmp_path / "src"
    shutil.copytree(STDLIB / "json", source / "json")
    shutil.copytree(STDLIB / "json", source / "tests")
    shutil.copy(STDLIB / "json" / "decoder.py", source / "test_decoder.py")
    (source / "deco.py").write_text(
        "import functools\n\n\nclass Box:\n    @functools.cache\n    def size(self, scale):\n"
        '        """Return the size of the box times the scale."""\n'
        "        width = self.width * scale\n        height = self.height * scale\n"
        "        return width * height\n"
    )
    first = load_code(source_dir=source, validation_fraction=0.3)
    records = first["train"].to_list() + first["validation"].to_list()
    decorated = [r for r in records if "def size" in r["prompt"]]
    assert decorated and decorated[0]["prompt"].startswith("@functools.cache\ndef size(self, scale):")
    json_only = load_code(source_dir=source / "json", validation_fraction=0.3)
    assert len(records) == len(json_only["train"]) + len(json_only["validation"]) + 1
    monkeypatch.setenv("PDL_PLUGIN_CACHE", str(tmp_path / "other-cache"))
    assert rows(load_code(source_dir=source, validation_fraction=0.3)) == rows(first)


# --- registry --------------------------------------------------------------------------


def test_registry_resolves_prefixed_names_and_passes_options():
    assert set(EMBEDDED_DATASETS) == {"dialogue", "summarization", "code"}
    assert rows(resolve_embedded_dataset("embedded:dialogue", max_records=5)) == rows(load_dialogue(max_records=5))
    via_registry = resolve_embedded_dataset("summarization", translation_files=[FIXTURE], validation_fraction=0.5)
    assert len(via_registry["train"]) + len(via_registry["validation"]) == 8


def test_registry_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="embedded:dialogue, embedded:summarization, embedded:code"):
        resolve_embedded_dataset("embedded:poetry")


def test_split_position_is_stable_and_ignores_case_and_spacing():
    assert cache.split_position("What is AI?") == cache.split_position("  what is   ai? ")
    assert cache.split_position("What is AI?") == 0.9418854913427097
