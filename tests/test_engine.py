"""PDLEngine on small tensors, against numbers computed by hand (no host framework involved)."""

import json
import logging
import math
import re

import pytest
import torch

from conftest import EQUATION_3
from pdl_plugin import FrequencyTable, PDLConfigError, PDLEngine, PDLError, PDLSettings
from pdl_plugin.engine import SETTINGS_FILENAME
from pdl_plugin.frequency import TABLE_FILENAME

# counts 3, 1, 0, 0 -> freq 0.75, 0.25; alpha 1, eps 1e-6
COUNTS = torch.tensor([3, 1, 0, 0])
W0, W1 = 1 / 0.750001, 1 / 0.250001


def engine(counts=COUNTS, masking="completion_only", **settings) -> PDLEngine:
    table = FrequencyTable(counts, "tok", "completion_only", "data")
    return PDLEngine(PDLSettings(**{"pdl_alpha": 1.0, **EQUATION_3, **settings}), table, host="test", masking=masking)


def test_step_denominator_sums_the_weights_of_every_micro_batch():
    labels = [torch.tensor([[0, 0, -100, 1]]), torch.tensor([[1, -100, -100, -100]])]
    got = engine().step_denominator(labels, "cpu", step=0)
    assert math.isclose(float(got), 2 * W0 + 2 * W1, rel_tol=1e-6)


def test_token_normalisation_counts_tokens():
    labels = [torch.tensor([[0, 0, -100, 1]]), torch.tensor([[1, -100, -100, -100]])]
    assert float(engine(pdl_normalize="token").step_denominator(labels, "cpu", step=0)) == 4.0


def test_all_reduce_and_ranks_per_batch_are_applied():
    labels = [torch.tensor([[0, 1]])]
    got = engine().step_denominator(labels, "cpu", step=0, all_reduce=lambda t: t * 3, ranks_per_batch=2)
    assert math.isclose(float(got), (W0 + W1) * 3 / 2, rel_tol=1e-6)


def test_micro_batch_loss_is_its_share_of_the_step():
    log_probs = torch.tensor([math.log(0.5), math.log(0.25), 0.0])
    targets = torch.tensor([0, 1, -100])
    got = engine().loss(log_probs, targets, step=0, training=True, num_items_in_batch=torch.tensor(10.0))
    expected = (W0 * math.log(2) + W1 * math.log(4)) / 10
    assert math.isclose(float(got), expected, rel_tol=1e-6)
    alone = engine().loss(log_probs, targets, step=0, training=True)  # no step denominator: its weighted mean
    assert math.isclose(float(alone), (W0 * math.log(2) + W1 * math.log(4)) / (W0 + W1), rel_tol=1e-6)


def test_metrics_are_plain_ce_mean_weight_and_warmup_alpha():
    e = engine(pdl_alpha_warmup_steps=4)
    e.loss(torch.tensor([math.log(0.5), math.log(0.25)]), torch.tensor([0, 1]), step=2, training=True)
    metrics = e.pop_metrics("train", step=3)
    assert math.isclose(metrics["ce_loss"], (math.log(2) + math.log(4)) / 2, rel_tol=1e-6)
    # step 2 of a 4-step warm-up: alpha 0.5, weights 1/sqrt(freq + eps)
    assert math.isclose(metrics["pdl_mean_weight"], (0.750001 ** -0.5 + 0.250001 ** -0.5) / 2, rel_tol=1e-6)
    assert metrics["pdl_alpha"] == 0.5  # alpha of the step just taken (step index 2)
    assert e.pop_metrics("train", step=3) == {"pdl_alpha": 0.5}  # totals were reset


def test_warmup_schedule():
    e = engine(pdl_alpha=0.8, pdl_alpha_warmup_steps=4)
    assert [e.alpha_at(s) for s in (0, 1, 2, 4, 9)] == [0.0, 0.2, 0.4, 0.8, 0.8]
    assert torch.equal(e.weights_at(0, "cpu"), torch.ones(4))
    assert torch.equal(e.weights_at(None, "cpu"), e.weights)  # evaluation: the full alpha


@pytest.mark.parametrize(("alpha", "epsilon"), [(10.0, 1e-6), (1e9, 1e-6), (0.5, 1e300)])
def test_settings_whose_float32_weights_are_unusable_are_refused(alpha, epsilon):
    # counts with a rare token (1 in 100,000): alpha 10 gives (1e-5)^-10 = 1e50, past float32
    counts = torch.tensor([99_999, 1])
    with pytest.raises(PDLConfigError, match=re.escape(f"pdl_alpha {alpha} with pdl_epsilon {epsilon} gives unusable")):
        engine(counts, pdl_alpha=alpha, pdl_epsilon=epsilon)


def test_a_non_finite_loss_stops_training_naming_step_alpha_epsilon():
    with pytest.raises(PDLError, match=r"optimizer step 7: the PDL loss is nan .*pdl_alpha 1.0, pdl_epsilon 1e-06"):
        engine().loss(torch.tensor([float("nan")]), torch.tensor([0]), step=7, training=True)


def test_a_non_finite_denominator_stops_training():
    e = engine()
    with pytest.raises(PDLError, match="the step's weight sum is inf"):
        e.step_denominator([torch.tensor([[0]])], "cpu", step=3, all_reduce=lambda t: t * float("inf"))


def test_an_all_zero_table_is_blamed_on_the_table():
    with pytest.raises(PDLConfigError, match=r"The table t.safetensors counts no trained token.*Recount it"):
        engine(torch.zeros(4, dtype=torch.int64), pdl_freq_path="t.safetensors")


def test_masking_mismatch_warns_and_is_recorded(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        e = engine(masking="assistant_only")
    assert "counted with masking 'completion_only', but this run trains 'assistant_only'" in caplog.text
    e.save(tmp_path)
    saved = json.loads((tmp_path / SETTINGS_FILENAME).read_text())
    assert (saved["table_masking"], saved["run_masking"]) == ("completion_only", "assistant_only")


def test_resume_checks(tmp_path):
    e = engine()
    e.save(tmp_path / "ckpt")
    e.check_resume(tmp_path / "ckpt")  # same table and settings: fine
    with pytest.raises(PDLConfigError, match=r"pdl_alpha \(1.0 -> 0.5\)"):
        engine(pdl_alpha=0.5).check_resume(tmp_path / "ckpt")
    engine(pdl_min_weight=None).check_resume(tmp_path / "ckpt")  # saved with a floor of 0: no floor either way
    with pytest.raises(PDLConfigError, match=r"pdl_min_weight \(0.0 -> 1.0\)"):
        engine(pdl_min_weight=1).check_resume(tmp_path / "ckpt")
    with pytest.raises(PDLConfigError, match="frequency table"):
        engine(torch.tensor([3, 2, 0, 0])).check_resume(tmp_path / "ckpt")
    (tmp_path / "ckpt" / SETTINGS_FILENAME).write_text('{"pdl_alpha": 1.')  # truncated by a crash
    with pytest.raises(PDLConfigError, match="missing or damaged"):
        e.check_resume(tmp_path / "ckpt")
    (tmp_path / "ckpt" / SETTINGS_FILENAME).unlink()
    with pytest.raises(PDLConfigError, match="missing or damaged"):
        e.check_resume(tmp_path / "ckpt")


def test_resume_from_a_checkpoint_without_pdl_files_needs_an_explicit_yes(tmp_path):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(PDLConfigError, match="holds no PDL table.*pdl_resume_without_table: true"):
        engine().check_resume(tmp_path / "ckpt")
    engine(pdl_resume_without_table=True).check_resume(tmp_path / "ckpt")


def test_save_writes_table_and_settings(tmp_path):
    engine().save(tmp_path)
    assert torch.equal(FrequencyTable.load(tmp_path / TABLE_FILENAME).counts, COUNTS)
    saved = json.loads((tmp_path / SETTINGS_FILENAME).read_text())
    assert saved["loss_type"] == "pdl" and saved["pdl_alpha"] == 1.0 and saved["host"] == "test"


def test_exempt_special_tokens_train_with_the_mean_weight(tmp_path):
    """Row 0 (3 of 4 trained tokens, the most frequent: the end-of-reply token's place) declared special: its weight
    is the count-weighted mean of the plain weights, (3 W0 + W1) / 4; the other rows keep equation (3)."""
    table = FrequencyTable(COUNTS, "tok", "completion_only", "data")
    settings = PDLSettings(**{**EQUATION_3, "pdl_alpha": 1.0, "pdl_exempt_special_tokens": True})
    e = PDLEngine(settings, table, host="test", special_token_ids=[0, 99])  # 99: outside the 4 output rows, ignored
    assert e.exempt_ids == (0,)
    mean = (3 * W0 + W1) / 4
    torch.testing.assert_close(e.weights[:2], torch.tensor([mean, W1]))
    log_probs, targets = torch.tensor([math.log(0.5), math.log(0.25)]), torch.tensor([0, 1])
    got = e.loss(log_probs, targets, step=0, training=True)
    assert math.isclose(float(got), (mean * math.log(2) + W1 * math.log(4)) / (mean + W1), rel_tol=1e-6)
    # off: the special ids change nothing
    plain = PDLEngine(PDLSettings(**{**EQUATION_3, "pdl_alpha": 1.0}), table, host="test", special_token_ids=[0])
    assert plain.exempt_ids == () and math.isclose(float(plain.weights[0]), W0, rel_tol=1e-6)
    # recorded, and a resume that turns it on or off is refused
    e.save(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / SETTINGS_FILENAME).read_text())["exempt_token_ids"] == [0]
    with pytest.raises(PDLConfigError, match=r"pdl_exempt_special_tokens \(True -> False\)"):
        plain.check_resume(tmp_path / "ckpt")
    plain.save(tmp_path / "old")  # a checkpoint saved before the setting existed has no key: nothing was exempt
    config = json.loads((tmp_path / "old" / SETTINGS_FILENAME).read_text())
    del config["pdl_exempt_special_tokens"]
    (tmp_path / "old" / SETTINGS_FILENAME).write_text(json.dumps(config))
    plain.check_resume(tmp_path / "old")
    with pytest.raises(PDLConfigError, match=r"pdl_exempt_special_tokens \(False -> True\)"):
        e.check_resume(tmp_path / "old")


def test_exempt_special_tokens_without_any_special_token_is_refused():
    table = FrequencyTable(COUNTS, "tok", "completion_only", "data")
    with pytest.raises(PDLConfigError, match="declares no special token"):
        PDLEngine(PDLSettings(pdl_exempt_special_tokens=True), table, host="test", special_token_ids=[])
