"""One declaration of the settings: both hosts derive their fields from it and accept exactly the same values."""

import dataclasses
import math

import pytest

from pdl_plugin import PDLConfigError, PDLSettings
from pdl_plugin.integrations.axolotl.args import PDLArgs, validate_pdl_settings
from pdl_plugin.settings import DEFAULTS, SETTING_NAMES

# value -> accepted? The same table is put to both hosts.
CASES = [
    ({"pdl_alpha": 0.0}, True), ({"pdl_alpha": "0.75"}, True), ({"pdl_alpha": -0.1}, False),
    ({"pdl_alpha": math.nan}, False), ({"pdl_alpha": math.inf}, False), ({"pdl_alpha": "strong"}, False),
    ({"pdl_epsilon": "1e-6"}, True), ({"pdl_epsilon": 0.0}, False), ({"pdl_epsilon": math.inf}, False),
    ({"pdl_max_weight": 20}, True), ({"pdl_max_weight": math.inf}, False), ({"pdl_max_weight": 0}, False),
    ({"pdl_max_weight": "abc"}, False), ({"pdl_normalize": "token"}, True), ({"pdl_normalize": "mean"}, False),
    ({"pdl_alpha_warmup_steps": 3}, True), ({"pdl_alpha_warmup_steps": -1}, False),
    ({"pdl_alpha_warmup_steps": 1.5}, False), ({"pdl_unseen_weight": "formula"}, True),
    ({"pdl_unseen_weight": "zero"}, False), ({"pdl_freq_path": ""}, False), ({"pdl_freq_path": "t.safetensors"}, True),
    ({"pdl_resume_without_table": True}, True), ({"pdl_resume_without_table": "yes"}, False),
    ({"pdl_exempt_special_tokens": True}, True), ({"pdl_exempt_special_tokens": "true"}, False),
    ({"pdl_min_weight": 1}, True), ({"pdl_min_weight": 0}, True), ({"pdl_min_weight": "0"}, True),
    ({"pdl_min_weight": -1}, False), ({"pdl_min_weight": math.inf}, False), ({"pdl_min_weight": False}, False),
]


def _trl_accepts(values: dict) -> bool:
    from pdl_plugin import PDLSFTConfig

    try:
        PDLSFTConfig(output_dir="/tmp/unused", loss_type="pdl", bf16=False, use_cpu=True, report_to=[], **values)
    except PDLConfigError:
        return False
    return True


def _axolotl_accepts(values: dict) -> bool:
    try:
        validate_pdl_settings({"loss_type": "pdl", **values})
    except PDLConfigError:
        return False
    return True


@pytest.mark.parametrize(("values", "accepted"), CASES, ids=[str(v) for v, _ in CASES])
def test_both_hosts_accept_exactly_the_same_values(values, accepted):
    assert _trl_accepts(values) is accepted
    assert _axolotl_accepts(values) is accepted


def test_every_setting_is_a_field_of_both_hosts_with_its_help():
    from pdl_plugin import PDLSFTConfig

    trl_fields = {f.name: f for f in dataclasses.fields(PDLSFTConfig)}
    for setting in dataclasses.fields(PDLSettings):
        assert trl_fields[setting.name].default == setting.default
        assert trl_fields[setting.name].metadata["help"] == setting.metadata["help"]
        assert setting.metadata["help"] in PDLArgs.model_fields[setting.name].json_schema_extra["description"]
    assert set(SETTING_NAMES) <= set(PDLArgs.model_fields)


def test_pdl_keys_without_loss_type_pdl_are_refused_on_both_hosts():
    from pdl_plugin import PDLSFTConfig

    with pytest.raises(PDLConfigError, match="pdl_alpha set but loss_type is 'nll'"):
        PDLSFTConfig(output_dir="/tmp/unused", loss_type="nll", pdl_alpha=0.9, bf16=False, use_cpu=True)
    with pytest.raises(PDLConfigError, match="pdl_alpha set but loss_type is 'nll'"):
        validate_pdl_settings({"loss_type": "nll", "pdl_alpha": 0.9})
    assert PDLSFTConfig(output_dir="/tmp/unused", bf16=False, use_cpu=True).pdl_alpha == DEFAULTS["pdl_alpha"]


def test_liger_kernel_is_refused_with_pdl():
    from pdl_plugin import PDLSFTConfig

    with pytest.raises(PDLConfigError, match="use_liger_kernel"):
        PDLSFTConfig(output_dir="/tmp/unused", loss_type="pdl", use_liger_kernel=True, bf16=False, use_cpu=True)


def test_the_axolotl_side_imports_neither_trl_nor_torch():
    import subprocess
    import sys

    code = ("import sys, pdl_plugin.integrations.axolotl.args, pdl_plugin.settings; "
            "assert 'trl' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_axolotl_training_args_carry_the_settings_and_the_host_facts():
    """What the plugin hands Axolotl as training arguments, read back as the trainer reads it: the YAML's values, the
    defaults for the rest, and which tokens the config trains."""
    from types import SimpleNamespace

    from pdl_plugin.integrations.axolotl.args import (
        PDLTrainingArgsMixin, settings_from_training_args, training_args_from_cfg,
    )

    cfg = {"loss_type": "pdl", "pdl_alpha": "0.25", "pdl_ce_mix": 0.5, "sequence_len": 256,
           "datasets": [{"path": "data.jsonl", "type": "chat_template", "roles_to_train": ["assistant"]}]}
    args = training_args_from_cfg(validate_pdl_settings(cfg))
    assert set(args) == {f.name for f in dataclasses.fields(PDLTrainingArgsMixin)}  # every key is a declared field
    settings, masking, extra = settings_from_training_args(SimpleNamespace(**args))
    assert settings == PDLSettings(pdl_alpha=0.25, pdl_ce_mix=0.5)
    assert masking == "assistant_only"
    assert extra == {"host": "axolotl", "datasets": '[{"path": "data.jsonl", "type": "chat_template"}]',
                     "sequence_len": "256"}


def test_axolotl_trainer_refuses_arguments_without_the_settings():
    """Training arguments built before the plugin was registered lack the fields: refused, never the defaults."""
    from types import SimpleNamespace

    from pdl_plugin.integrations.axolotl.args import settings_from_training_args

    with pytest.raises(PDLConfigError, match="List pdl_plugin.integrations.axolotl.PDLPlugin first"):
        settings_from_training_args(SimpleNamespace(learning_rate=2e-4))


@pytest.mark.parametrize("zero", [0, 0.0, "0"])
def test_a_floor_of_0_survives_every_host_round_trip(zero):
    # 0 is no floor (weights are positive: max(w, 0 * mean) = w), the way to switch a default floor off. It must stay
    # 0 through each host's reading, where None means "not given, take the default"
    from pdl_plugin import PDLSFTConfig
    from pdl_plugin.integrations.axolotl.args import training_args_from_cfg

    assert PDLSettings(pdl_min_weight=zero).pdl_min_weight == 0.0
    config = PDLSFTConfig(output_dir="/tmp/unused", loss_type="pdl", bf16=False, use_cpu=True, report_to=[],
                          pdl_min_weight=zero)
    assert config.pdl_settings.pdl_min_weight == 0.0
    cfg = validate_pdl_settings({"loss_type": "pdl", "pdl_min_weight": zero})
    assert PDLSettings.from_mapping(training_args_from_cfg(cfg)).pdl_min_weight == 0.0
