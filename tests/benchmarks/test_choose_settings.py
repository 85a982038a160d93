"""choose_settings.py's rows: a decided "no PDL" (plain CE) must not read like a choice not yet made, and back."""

from conftest import load_benchmark

from pdl_plugin.study.arms import parse_arm
from pdl_plugin.study.choice import Choice

choose = load_benchmark("choose_settings")


def test_plain_ce_and_undecided_rows_differ():
    ce = choose._row("the code recipes", Choice(None, "no arm keeps the rare-token gain", warning=True), {})
    assert ce == "| the code recipes | plain cross-entropy | alpha=0 | no arm keeps the rare-token gain (warning) |"
    undecided = choose._row("the code recipes", Choice(None, "undecided: too few seeds", decided=False), {})
    assert undecided == "| the code recipes | - | - | undecided: too few seeds |"


def test_a_chosen_arm_row_names_its_setting_and_arm_spec():
    arm = parse_arm("alpha=0.5,exempt=true,min_weight=1")
    row = choose._row("the dialogue recipes", Choice(arm.name, "helps"), {arm.name: arm})
    assert row.startswith("| the dialogue recipes | alpha 0.5") and "`alpha=0.5,exempt=true,min_weight=1`" in row
