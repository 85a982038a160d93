"""Study arms: the folder names of the first study's arms stay, new settings get names and recipe overrides, and
`--arm` text is refused with one line when it cannot be an arm."""

import pytest

from pdl_plugin import PDLConfigError
from pdl_plugin.study.arms import Arm, check_arm_names, parse_arm


@pytest.mark.parametrize("arm, name", [
    (Arm(0.0), "alpha-0"), (Arm(0.25), "alpha-0.25"), (Arm(1.0, 154), "alpha-1-warmup-154"),
    (Arm(0.5, exempt=True), "alpha-0.5-exempt"),
])
def test_the_first_studys_arms_keep_their_folder_names(arm, name):
    assert arm.name == name
    assert Arm.of({"alpha": arm.alpha, "warmup_steps": arm.warmup_steps, "exempt": arm.exempt}) == arm


def test_an_arm_of_any_settings():
    arm = parse_arm("alpha=0.5, exempt=true, prior_mix=0.5, prior_path=docs/priors/model_prior.safetensors")
    assert arm == Arm(0.5, 0, True, (("prior_path", "docs/priors/model_prior.safetensors"), ("prior_mix", "0.5")))
    assert arm.name == "alpha-0.5-exempt-prior-model_prior-prior_mix-0.5"
    assert arm.label == "alpha 0.5, special tokens exempt, prior model_prior, prior_mix 0.5"
    assert arm.recipe_options() == ["--pdl_prior_path", "docs/priors/model_prior.safetensors", "--pdl_prior_mix", "0.5"]
    # written in any order, it is the same arm; its results give it back
    assert parse_arm("prior_path=docs/priors/model_prior.safetensors,prior_mix=0.5,exempt=true,alpha=0.5") == arm
    assert Arm.of({"alpha": 0.5, "warmup_steps": 0, "exempt": True, "options": dict(arm.options)}) == arm
    floor = parse_arm("alpha=0.5,warmup_steps=10,min_weight=1")
    assert floor.name == "alpha-0.5-warmup-10-min_weight-1" and floor.recipe_options() == ["--pdl_min_weight", "1"]


def test_the_variants_an_arm_does_not_name_are_switched_off():
    assert Arm(0.5).variants_off() == ["--pdl_min_weight", "0", "--pdl_ce_mix", "0"]
    assert parse_arm("alpha=0.5,min_weight=1").variants_off() == ["--pdl_ce_mix", "0"]
    assert parse_arm("alpha=0.5,ce_mix=0.5,min_weight=1").variants_off() == []


@pytest.mark.parametrize("text, message", [
    ("alpha=0.5,floor=1", "unknown key 'floor'"), ("min_weight=1", "has no alpha"),
    ("alpha=0.5,alpha=1", "given twice"), ("alpha=0.5,min_weight=", "KEY=VALUE"), ("alpha=-1", ">= 0"),
    ("alpha=0.5,warmup_steps=1.5", "whole number"), ("alpha=0.5,exempt=1", "true or false"),
])
def test_arm_text_refused_with_the_fix(text, message):
    with pytest.raises(PDLConfigError, match=message):
        parse_arm(text)


def test_two_arms_that_would_share_a_folder_are_refused():
    a, b = parse_arm("alpha=0.5,prior_path=x/p.safetensors"), parse_arm("alpha=0.5,prior_path=y/p.safetensors")
    with pytest.raises(PDLConfigError, match="share the folder 'alpha-0.5-prior-p'"):
        check_arm_names([a, b])
    check_arm_names([a, a])
