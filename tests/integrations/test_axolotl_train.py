"""Real `axolotl train` runs on CPU with the PDL plugin, checked against an independent PDL computation.

Runs only where Axolotl is installed (`.venv-axolotl`, see scripts/setup_axolotl.sh and .ci/axolotl); skipped elsewhere.
"""

from __future__ import annotations

import json
import math
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.version import Version

pytest.importorskip("axolotl")

import torch  # noqa: E402

from .axolotl_helpers import (  # noqa: E402
    PDL_PLUGIN,
    count_labels_by_hand,
    load_record,
    lora_model,
    max_relative_difference,
    one_batch,
    reference_gradients,
    reference_weights,
    reference_window,
    rows_of,
    run_axolotl,
    step_logs,
    short_config,
)

ALPHA, EPSILON = 0.5, 1.0e-6


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """One dataset_prepared_path for every run: Axolotl tokenizes the dialogue data once."""
    return tmp_path_factory.mktemp("axolotl-prepared")


@pytest.fixture(scope="session")
def smol_path() -> str:
    from pdl_plugin.data.embedded_model import resolve_embedded_model

    return resolve_embedded_model("embedded:SmolLM2-135M-Instruct")


@pytest.fixture(scope="module")
def pdl_run(tmp_path_factory, prepared):
    """LoRA, alpha 0.5, 2 micro-batches of 2 per optimizer step, 3 steps."""
    tmp = tmp_path_factory.mktemp("pdl-2x2")
    cfg = short_config(tmp, prepared)
    run_axolotl(tmp, cfg)
    return cfg, load_record(cfg)


def test_table_and_settings_saved_in_output_dir(pdl_run, prepared):
    from datasets import load_from_disk

    from pdl_plugin.frequency import FrequencyTable

    cfg, record = pdl_run
    out = Path(cfg["output_dir"])
    table = FrequencyTable.load(out / "pdl_frequency_table.safetensors")
    settings = json.loads((out / "pdl_config.json").read_text())
    assert settings["loss_type"] == "pdl" and settings["pdl_alpha"] == ALPHA and settings["pdl_normalize"] == "weighted"
    assert table.masking == "assistant_only" and table.vocab_size == 49152
    assert record["trainer_cls"] == "PDLAxolotlTrainer"
    # Counted over Axolotl's own prepared training set: its labels that are not -100, after the causal shift
    (folder,) = [p for p in prepared.iterdir() if (p / "dataset_info.json").is_file() or list(p.glob("*.arrow"))]
    by_hand = count_labels_by_hand(load_from_disk(str(folder))["labels"])
    counted = {i: int(c) for i, c in enumerate(table.counts.tolist()) if c}
    assert counted == by_hand
    assert table.total == sum(by_hand.values()) > 10_000


def test_logged_loss_equals_independent_pdl(pdl_run, smol_path):
    from pdl_plugin.frequency import FrequencyTable

    cfg, record = pdl_run
    counts = FrequencyTable.load(Path(cfg["output_dir"])).counts
    weights = reference_weights(counts, ALPHA, EPSILON)
    logs = step_logs(record)
    assert len(logs) == len(record["windows"]) == len(record["params"]) == 3
    report = []
    for step, (log, window, params) in enumerate(zip(logs, record["windows"], record["params"]), start=1):
        model = lora_model(smol_path, params, cfg)
        expected = reference_window(model, window["batches"], weights)
        report.append((step, log["loss"], expected["loss"], log["ce_loss"], expected["ce_loss"]))
        assert len(window["batches"]) == 2
        # float32 model forward on both sides (Axolotl's and a fresh transformers one): agreement to ~1e-6
        assert math.isclose(log["loss"], expected["loss"], rel_tol=1e-5), report
        assert math.isclose(log["ce_loss"], expected["ce_loss"], rel_tol=1e-5), report
        assert math.isclose(log["pdl_mean_weight"], expected["mean_weight"], rel_tol=1e-5), report
        # Axolotl's `ppl` is the perplexity of the plain cross-entropy, not exp of the weighted PDL mean
        assert math.isclose(log["ppl"], math.exp(expected["ce_loss"]), rel_tol=1e-4), report
        # The denominator the Trainer passed: the weight sum over the whole accumulation window
        assert math.isclose(window["num_items_in_batch"], expected["weight_sum"], rel_tol=1e-6), report
        assert expected["loss"] != pytest.approx(expected["ce_loss"], rel=1e-3)  # alpha 0.5 really reweights
    worst = max(abs(logged / expected - 1) for _, logged, expected, _, _ in report)
    print("\nstep, logged PDL, independent PDL, logged CE, independent CE:", *report, sep="\n")
    print(f"max relative difference of the logged PDL loss: {worst:.2e}")


def test_accumulated_gradient_equals_one_big_batch(pdl_run, smol_path, tmp_path, prepared):
    """2 x 2 (this run), 1 x 4 (a second real run, reusing the table via pdl_freq_path) and one independent batch."""
    from transformers import AutoTokenizer

    from pdl_plugin.frequency import FrequencyTable

    cfg, record = pdl_run
    table_path = str(Path(cfg["output_dir"]) / "pdl_frequency_table.safetensors")
    one = short_config(tmp_path, prepared, micro_batch_size=4, gradient_accumulation_steps=1, max_steps=1,
                      pdl_freq_path=table_path)
    run_axolotl(tmp_path, one)
    single = load_record(one)
    assert rows_of(single["windows"][0]["batches"]) == rows_of(record["windows"][0]["batches"]), "not the same samples"
    assert "using the frequency table" in (tmp_path / "train.log").read_text()

    weights = reference_weights(FrequencyTable.load(table_path).counts, ALPHA, EPSILON)
    model = lora_model(smol_path, record["params"][0], cfg)
    pad_id = AutoTokenizer.from_pretrained(smol_path).pad_token_id or 0
    expected = reference_gradients(model, one_batch(record["windows"][0]["batches"], pad_id), weights)
    accumulated = {k: v for k, v in record["grads"][0].items()}
    big_batch = {k: v for k, v in single["grads"][0].items()}
    ga_vs_big, ga_vs_reference = max_relative_difference(big_batch, accumulated), max_relative_difference(expected, accumulated)
    print(f"\nmax relative gradient difference: 2x2 vs 1x4 {ga_vs_big:.2e}, 2x2 vs independent {ga_vs_reference:.2e}")
    assert ga_vs_big < 1e-4 and ga_vs_reference < 1e-4
    assert math.isclose(step_logs(single)[0]["loss"], step_logs(record)[0]["loss"], rel_tol=1e-5)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_alpha_zero_reproduces_axolotls_own_loss(tmp_path, prepared, accumulation):
    """Same data, seed and settings; one run with Axolotl's own cross-entropy, one with PDL at alpha 0.

    With 2 micro-batches per step only from Axolotl 0.21 on: 0.19's own loss averages the micro-batch means for models
    whose forward takes no `num_items_in_batch` (SmolLM2 among them), which is not the token mean (README, Axolotl)."""
    if accumulation > 1 and Version(version("axolotl")) < Version("0.21"):
        pytest.skip("Axolotl 0.19's own loss is not token-exact under gradient accumulation (README, Axolotl)")
    shared = dict(micro_batch_size=4 // accumulation, gradient_accumulation_steps=accumulation, max_steps=3)
    own = short_config(tmp_path / "own", prepared, **shared)
    for key in [key for key in own if key == "loss_type" or key.startswith("pdl_")]:
        own.pop(key)
    pdl0 = short_config(tmp_path / "pdl0", prepared, **shared, pdl_alpha=0.0)
    run_axolotl(tmp_path / "own", own)
    run_axolotl(tmp_path / "pdl0", pdl0)
    own_record, pdl_record = load_record(own), load_record(pdl0)
    assert own_record["trainer_cls"] == "AxolotlTrainer" and pdl_record["trainer_cls"] == "PDLAxolotlTrainer"
    pairs = [(a["loss"], b["loss"], a["grad_norm"], b["grad_norm"]) for a, b in zip(step_logs(own_record), step_logs(pdl_record))]
    print("\nAxolotl loss, PDL alpha-0 loss, Axolotl grad norm, PDL grad norm:", *pairs, sep="\n")
    assert len(pairs) == 3
    for own_loss, pdl_loss, own_norm, pdl_norm in pairs:
        assert math.isclose(own_loss, pdl_loss, rel_tol=1e-5)
        assert math.isclose(own_norm, pdl_norm, rel_tol=1e-4)


def test_pdl_freq_command_counts_the_training_table(pdl_run, tmp_path):
    """`axolotl pdl-freq` (an `axolotl.cli_commands` entry point) counts with Axolotl's own preprocessing."""
    import torch as _torch

    from pdl_plugin.frequency import FrequencyTable

    cfg, _ = pdl_run
    output = tmp_path / "table.safetensors"
    _, log = run_axolotl(tmp_path, cfg, "pdl-freq", "--output", str(output))
    trained = FrequencyTable.load(Path(cfg["output_dir"]))
    counted = FrequencyTable.load(output)
    assert _torch.equal(counted.counts, trained.counts)
    assert counted.tokenizer_fingerprint == trained.tokenizer_fingerprint and counted.masking == trained.masking
    assert "most down- and up-weighted" in log


def test_table_of_another_tokenizer_is_refused(pdl_run, tmp_path, prepared):
    from pdl_plugin.frequency import FrequencyTable

    cfg, _ = pdl_run
    trained = FrequencyTable.load(Path(cfg["output_dir"]))
    wrong = FrequencyTable(trained.counts, "0123456789abcdef", trained.masking, trained.data_fingerprint)
    path = wrong.save(tmp_path / "other.safetensors")
    bad = short_config(tmp_path, prepared, max_steps=1, pdl_freq_path=str(path))
    code, log = run_axolotl(tmp_path, bad, check=False)
    assert code != 0 and "was counted with another tokenizer" in log
    assert "Loading weights" not in log  # refused before the model is loaded


def test_qlora_logged_loss_equals_independent_pdl(tmp_path, prepared, smol_path):
    """QLoRA (4-bit nf4 through bitsandbytes on CPU): the first step against the same 4-bit model loaded directly."""
    from transformers import BitsAndBytesConfig

    from pdl_plugin.frequency import FrequencyTable

    cfg = short_config(tmp_path, prepared, name="offline_dialogue_qlora.yaml", max_steps=2)
    run_axolotl(tmp_path, cfg)
    record = load_record(cfg)
    counts = FrequencyTable.load(Path(cfg["output_dir"])).counts
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32, bnb_4bit_use_double_quant=True,
        bnb_4bit_quant_type="nf4", bnb_4bit_quant_storage=torch.bfloat16,
    )
    model = lora_model(smol_path, record["params"][0], cfg, quantization_config=quantization)
    expected = reference_window(model, record["windows"][0]["batches"], reference_weights(counts, ALPHA, EPSILON))
    logged = step_logs(record)[0]
    print(f"\nQLoRA step 1: logged PDL {logged['loss']!r}, independent {expected['loss']!r}")
    assert math.isclose(logged["loss"], expected["loss"], rel_tol=1e-5)
    assert all(math.isfinite(entry["loss"]) for entry in step_logs(record))
    assert PDL_PLUGIN in cfg["plugins"]


def test_exempt_special_tokens_logged_loss_equals_independent_pdl(tmp_path, prepared, smol_path):
    """`pdl_exempt_special_tokens: true` through `axolotl train`: the first step's loss equals the direct formula with
    equation (3)'s weights, the tokenizer's special tokens given the count-weighted mean weight (written out here)."""
    from transformers import AutoTokenizer

    from pdl_plugin.frequency import FrequencyTable

    cfg = short_config(tmp_path, prepared, max_steps=1, pdl_exempt_special_tokens=True)
    run_axolotl(tmp_path, cfg)
    record = load_record(cfg)
    counts = FrequencyTable.load(Path(cfg["output_dir"])).counts.to(torch.float64)
    special = AutoTokenizer.from_pretrained(smol_path).all_special_ids
    end_of_turn = AutoTokenizer.from_pretrained(smol_path).convert_tokens_to_ids("<|im_end|>")
    plain = reference_weights(counts, ALPHA, EPSILON)
    weights = plain.clone()
    weights[special] = (plain * counts).sum() / counts.sum()
    assert counts[end_of_turn] > 0 and end_of_turn in special  # the end-of-turn token is trained and exempt
    saved = json.loads((Path(cfg["output_dir"]) / "pdl_config.json").read_text())
    assert saved["pdl_exempt_special_tokens"] is True and end_of_turn in saved["exempt_token_ids"]
    model = lora_model(smol_path, record["params"][0], cfg)
    batches = record["windows"][0]["batches"]
    expected = reference_window(model, batches, weights)
    logged = step_logs(record)[0]
    print(f"\nexempt special tokens, step 1: logged PDL {logged['loss']!r}, independent {expected['loss']!r}")
    assert math.isclose(logged["loss"], expected["loss"], rel_tol=1e-5)
    assert not math.isclose(expected["loss"], reference_window(model, batches, plain)["loss"], rel_tol=1e-4)
