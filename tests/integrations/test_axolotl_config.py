"""Axolotl's own config validation with the plugin: PDL keys known, bad ones refused, loss patches refused.

In-process (`axolotl.cli.config.load_cfg`, as `axolotl train` calls it), no model weights loaded. Skipped without Axolotl.
"""

from __future__ import annotations

import copy
import re

import pytest

pytest.importorskip("axolotl")

from .axolotl_helpers import RECIPES, axolotl_env, recipe  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for key, value in axolotl_env().items():
        if key in ("AXOLOTL_DO_NOT_TRACK", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            monkeypatch.setenv(key, value)


def load(cfg: dict, tmp_path):
    from axolotl.cli.config import load_cfg
    from axolotl.utils.dict import DictDefault

    cfg = copy.deepcopy(cfg)
    cfg.setdefault("output_dir", str(tmp_path / "out"))
    cfg["output_dir"] = str(tmp_path / "out")
    return load_cfg(DictDefault(cfg))


def offline_lora(**overrides):
    return recipe("offline_dialogue_lora.yaml", **overrides)


def test_pdl_keys_are_part_of_axolotls_schema(tmp_path):
    cfg = load(offline_lora(pdl_epsilon="1e-6"), tmp_path)  # YAML reads 1e-6 as a string: accepted as a number
    assert cfg.loss_type == "pdl" and cfg.pdl_alpha == 0.5 and cfg.pdl_epsilon == 1e-6
    assert cfg.pdl_normalize == "weighted"
    assert cfg.base_model.endswith("SmolLM2-135M-Instruct/v1")  # embedded: resolved by the plugin
    assert cfg.datasets[0]["path"].endswith(".jsonl")


def test_without_loss_type_the_plugin_stays_out_of_the_way(tmp_path):
    cfg = offline_lora()
    for key in [key for key in cfg if key == "loss_type" or key.startswith("pdl_")]:
        cfg.pop(key)
    loaded = load(cfg, tmp_path)
    assert loaded.loss_type is None and "pdl_alpha" not in loaded


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pdl_alfa": 0.5}, "Unknown key `pdl_alfa`"),
        ({"pdl_alfa": 0.5}, "Did you mean `pdl_alpha`"),
        ({"pdl_alpha": -1}, "pdl_alpha must be a finite number >= 0"),
        ({"pdl_alpha": "strong"}, "pdl_alpha must be a number"),
        ({"pdl_alpha": True}, "pdl_alpha must be a number"),
        ({"pdl_epsilon": 0}, "pdl_epsilon must be a finite number > 0"),
        ({"pdl_normalize": "mean"}, "pdl_normalize must be one of"),
        ({"pdl_max_weight": -2}, "pdl_max_weight must be"),
        ({"pdl_alpha_warmup_steps": 1.5}, "pdl_alpha_warmup_steps must be a whole number"),
        ({"loss_type": "focal"}, "loss_type must be one of"),
        ({"loss_type": None}, "set but loss_type is None"),
        ({"loss_type": "nll"}, "set but loss_type is 'nll'"),
        ({"pdl_min_weight": -1}, "pdl_min_weight must be a finite number > 0"),
        ({"pdl_min_weight": 3, "pdl_max_weight": 2}, "pdl_min_weight 3.0 is above pdl_max_weight 2.0"),
        ({"pdl_ce_mix": 1.5}, "pdl_ce_mix must be a number in [0, 1]"),
        ({"pdl_prior_mix": 0.5}, "pdl_prior_mix is set but pdl_prior_path is not"),
        ({"pdl_prior_path": "prior.safetensors"}, "but pdl_prior_mix is not"),
    ],
)
def test_bad_pdl_settings_are_refused_before_anything_loads(tmp_path, overrides, message):
    with pytest.raises(Exception, match=re.escape(message)):
        load(offline_lora(**overrides), tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cut_cross_entropy": True}, "cut_cross_entropy"),
        ({"plugins": ["pdl_plugin.integrations.axolotl.PDLPlugin",
                      "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin",
                      "pdl_plugin.integrations.axolotl.EmbeddedResourcesPlugin"]}, "Cut Cross Entropy"),
        ({"plugins": ["pdl_plugin.integrations.axolotl.PDLPlugin", "axolotl.integrations.liger.LigerPlugin",
                              "pdl_plugin.integrations.axolotl.EmbeddedResourcesPlugin"],
          "liger_fused_linear_cross_entropy": True}, "liger_fused_linear_cross_entropy"),
        ({"plugins": ["pdl_plugin.integrations.axolotl.PDLPlugin", "axolotl.integrations.liger.LigerPlugin",
                              "pdl_plugin.integrations.axolotl.EmbeddedResourcesPlugin"],
          "liger_cross_entropy": True}, "liger_cross_entropy"),
        ({"chunked_cross_entropy": True}, "chunked_cross_entropy"),
        ({"use_eaft": True}, "use_eaft"),
    ],
)
def test_fused_or_other_losses_are_refused_with_pdl(tmp_path, overrides, message):
    with pytest.raises(Exception, match="loss_type 'pdl' cannot be combined with") as err:
        load(offline_lora(**overrides), tmp_path)
    assert message in str(err.value)


def test_liger_without_its_cross_entropy_is_fine(tmp_path):
    cfg = load(offline_lora(plugins=["pdl_plugin.integrations.axolotl.PDLPlugin", "axolotl.integrations.liger.LigerPlugin",
                              "pdl_plugin.integrations.axolotl.EmbeddedResourcesPlugin"],
                            liger_rms_norm=True), tmp_path)
    assert cfg.loss_type == "pdl"


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_every_axolotl_recipe_validates(name, tmp_path):
    """Each recipe passes Axolotl's schema with the plugin (schema only: nothing is fetched from the hub)."""
    from axolotl.cli.config import prepare_plugins
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(recipe(name))
    assert "pdl_plugin.integrations.axolotl.PDLPlugin" in cfg.plugins and cfg.loss_type == "pdl"
    prepare_plugins(cfg)
    validated = validate_config(cfg)
    assert validated.loss_type == "pdl" and validated.pdl_alpha == recipe(name)["pdl_alpha"]


@pytest.mark.parametrize("old, new", [
    ("pdl_plugin.integrations.axolotl_embedded.EmbeddedResourcesPlugin",
     "pdl_plugin.integrations.axolotl.embedded.EmbeddedResourcesPlugin"),
    ("pdl_plugin.integrations.axolotl.EmbeddedResourcesPlugin",
     "pdl_plugin.integrations.axolotl.embedded.EmbeddedResourcesPlugin"),
    ("pdl_plugin.integrations.axolotl.PDLPlugin", "pdl_plugin.integrations.axolotl.plugin.PDLPlugin"),
])
def test_plugin_paths_of_earlier_yamls_still_load(old, new):
    """YAMLs written for the five loose modules keep working: Axolotl's loader finds the same plugin class."""
    from axolotl.integrations.base import load_plugin

    module, name = new.rsplit(".", 1)
    assert type(load_plugin(old)) is getattr(__import__(module, fromlist=[name]), name)


def test_pdl_settings_reach_axolotls_training_arguments(tmp_path):
    """The settings travel through Axolotl's training-arguments hooks: its TrainingArguments class has the fields
    and the plugin fills them from the validated config (the trainer reads nothing else)."""
    import dataclasses

    from axolotl.integrations.base import PluginManager

    cfg = load(offline_lora(pdl_alpha=0.25, pdl_min_weight=1.0), tmp_path)
    from axolotl.core.training_args import AxolotlTrainingArguments

    assert {"pdl_alpha", "pdl_min_weight", "pdl_masking"} <= {f.name for f in dataclasses.fields(AxolotlTrainingArguments)}
    args = PluginManager.get_instance().get_training_args(cfg)
    assert args["pdl_alpha"] == 0.25 and args["pdl_min_weight"] == 1.0 and args["pdl_masking"] == "assistant_only"
