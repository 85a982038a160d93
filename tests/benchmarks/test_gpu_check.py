"""The prepared GPU check (benchmarks/gpu_check.sh): its model shapes are the published ones, and its toy mode runs
end to end on CPU with every row of the table and finite numbers."""

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ROOT / "benchmarks" / "model_shapes"
# published parameter counts (Qwen2.5 model cards: 3.09B and 7.61B) of the models built from the committed configs
PARAMETERS = {"Qwen2.5-3B-Instruct": 3_085_938_688, "Qwen2.5-Coder-3B-Instruct": 3_085_938_688,
              "Qwen2.5-7B-Instruct": 7_615_616_512, "Qwen2.5-Coder-7B-Instruct": 7_615_616_512}
TIED = {"Qwen2.5-3B-Instruct": True, "Qwen2.5-Coder-3B-Instruct": True, "Qwen2.5-7B-Instruct": False,
        "Qwen2.5-Coder-7B-Instruct": False}


def test_every_gpu_recipe_has_its_model_shape():
    models = {yaml.safe_load(p.read_text())["model_name_or_path"] for p in (ROOT / "recipes" / "gpu").glob("*.yaml")}
    assert {m.rsplit("/", 1)[-1] for m in models} == set(PARAMETERS)
    assert {p.stem for p in SHAPES.glob("*.json")} == set(PARAMETERS)


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_model_shape_builds_the_published_model(name):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**json.loads((SHAPES / f"{name}.json").read_text()))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name]
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == TIED[name]


def test_toy_run_prints_every_row_with_finite_numbers(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--toy", "--out", str(tmp_path / "out"),
               "--work_dir", str(tmp_path / "work")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    rows = report["rows"]
    assert report["toy"] is True
    # 4 training shapes (3B and 7B class, LoRA and QLoRA, 4 x 1024 and 2 x 2048 at 1/16 length) x {pdl, nll}
    training = {(r["case"], r["variant"]) for r in rows if r["kind"] == "train"}
    cases = {case for case, _ in training}
    assert len(cases) == 4 and training == {(c, v) for c in cases for v in ("pdl", "nll")}
    assert sorted(case.split(", ")[-1] for case in cases) == ["2 x 128", "2 x 128", "4 x 64", "4 x 64"]
    recipes = sorted(name for r in rows if r["kind"] == "train" and r["variant"] == "pdl" for name in r["recipes"])
    assert recipes == sorted(p.stem for p in (ROOT / "recipes" / "gpu").glob("*.yaml"))
    # the loss step for both vocabularies: naive, our kernel, TRL's
    loss = {(r["case"], r["variant"]) for r in rows if r["kind"] == "loss_step"}
    assert len(loss) == 6 and {v for _, v in loss} == {"naive", "pdl_fused", "trl_trained_only"}
    for row in rows:
        assert row["status"] == "ok", row
        numbers = [row[k] for k in ("peak_allocated_gb", "tokens_per_s", "step_s_median", "memory_vs_reference",
                                    "time_vs_reference")]
        assert all(math.isfinite(x) and x > 0 for x in numbers), row
    table = (tmp_path / "out" / "gpu_check.md").read_text()
    assert table.count("| ok |") == len(rows) == 14
    assert "| ok |" in result.stdout  # the table is printed too
