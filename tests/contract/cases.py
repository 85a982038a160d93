"""The PDL contract: one list of cases, each checked on both hosts against a computation that is not the engine's.

Every case names what must hold, the independent computation it is checked against, and the tests that check it on
each host: TRL (`PDLSFTTrainer`, the main suite, `.venv`) and Axolotl (real `axolotl train` runs, `.venv-axolotl`,
run by `.ci/axolotl`). Where an older test already covers a case on one host it is referenced here, not copied.
`tests/contract/test_trl_contract.py` and `tests/integrations/test_axolotl_contract.py` each check that every case
has a test on their host and that every referenced test exists (by parsing the files: this module imports nothing,
so both venvs can read it). `python tests/contract/cases.py` prints the matrix.

"Independent" means: a direct formula in float64 on logged or recorded values, a fresh model recomputation, or the
host's own unweighted loss at alpha 0. Never the engine's own output.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOSTS = ("trl", "axolotl")


@dataclass(frozen=True)
class Case:
    name: str
    claim: str  # what must hold
    against: str  # the independent computation it is checked against
    trl: tuple[str, ...]  # "path::test" node ids (the path relative to the repository)
    axolotl: tuple[str, ...]
    known_gap: str = ""  # a part of the case that fails today (its test is a strict xfail naming the bug)

    def tests(self, host: str) -> tuple[str, ...]:
        return getattr(self, host)


T = "tests/test_trainer.py::"
R = "tests/test_resume.py::"
Q = "tests/test_qlora.py::"
C = "tests/contract/test_trl_contract.py::"
A = "tests/integrations/test_axolotl_train.py::"
X = "tests/integrations/test_axolotl_contract.py::"
V = "tests/contract/test_trl_variants.py::"

CASES: tuple[Case, ...] = (
    Case(
        "table_counts_the_trained_tokens",
        "the frequency table counts exactly the trained targets of the host's prepared training set",
        "labels != -100 after the causal shift, counted by hand from the raw data or the prepared rows",
        trl=(T + "test_counts_of_prompt_completion_data_are_the_completion_tokens",
             T + "test_counts_of_conversations_are_the_assistant_tokens_with_end_of_turn"),
        axolotl=(A + "test_table_and_settings_saved_in_output_dir",),
    ),
    Case(
        "loss_equals_direct_formula",
        "the loss of a step is sum w*nll / sum w over its trained tokens",
        "full logits of the same model (TRL) or a fresh transformers + peft model from the recorded LoRA weights "
        "(Axolotl), float64 log-softmax, eq. (3) weights from the counts, written out",
        trl=(T + "test_loss_of_one_batch_is_the_weighted_mean_of_a_direct_formula",),
        axolotl=(A + "test_logged_loss_equals_independent_pdl",),
    ),
    Case(
        "ce_loss_and_mean_weight_equal_direct_formula",
        "the logged ce_loss and pdl_mean_weight are the plain mean nll and the mean weight of the step's tokens",
        "the same float64 recomputation as the loss: sum nll / tokens and sum w / tokens",
        trl=(T + "test_gradient_accumulation_4x1_equals_one_batch_of_4",
             C + "test_warmup_each_step_equals_direct_formula_at_its_alpha"),
        axolotl=(A + "test_logged_loss_equals_independent_pdl",
                 X + "test_warmup_schedule_each_step_equals_independent_pdl_at_its_alpha"),
    ),
    Case(
        "alpha_zero_equals_host_cross_entropy",
        "pdl_alpha 0 gives the host's own cross-entropy, in loss and gradients",
        "the host's own unweighted loss on the same batches: TRL loss_type nll (loss and every gradient); Axolotl "
        "without loss_type pdl (loss and grad norm, gradient_accumulation_steps 1)",
        trl=(T + "test_alpha_zero_equals_trl_nll_in_loss_and_gradient",),
        axolotl=(A + "test_alpha_zero_reproduces_axolotls_own_loss",),
    ),
    Case(
        "accumulation_4x1_equals_batch_4",
        "4 micro-batches of 1 accumulate to the gradient of one batch of 4 (relative error <= 1e-5)",
        "TRL: the parameter update of a real batch-4 run; Axolotl: the gradient of the formula over the same 4 rows "
        "as one batch on a fresh float64 model, and 2 x 2 against a real 1 x 4 run (bit for bit)",
        trl=(T + "test_gradient_accumulation_4x1_equals_one_batch_of_4",),
        axolotl=(X + "test_gradient_accumulation_4x1_equals_one_batch_of_4",
                 A + "test_accumulated_gradient_equals_one_big_batch"),
    ),
    Case(
        "warmup_schedule",
        "with pdl_alpha_warmup_steps 2 the logged pdl_alpha is 0, a/2, a; the first step's loss is its ce_loss; each "
        "step's loss is PDL at that step's alpha",
        "the schedule written out as constants, and the direct formula with eq. (3) weights at each step's alpha",
        trl=(T + "test_alpha_warmup_starts_as_cross_entropy_and_reaches_alpha",
             C + "test_warmup_each_step_equals_direct_formula_at_its_alpha"),
        axolotl=(X + "test_warmup_schedule_each_step_equals_independent_pdl_at_its_alpha",),
    ),
    Case(
        "resume_equals_uninterrupted",
        "a run interrupted after its step-2 checkpoint and resumed logs the losses of the uninterrupted run "
        "(relative 1e-5)",
        "the uninterrupted run of the same config (host vs host, not the engine)",
        trl=(R + "test_interrupted_and_resumed_run_matches_the_uninterrupted_one",),
        axolotl=(X + "test_resume_after_a_crash_equals_the_uninterrupted_run",),
    ),
    Case(
        "resume_refuses_changed_table_or_alpha",
        "resuming with other data (hence another table) or another pdl_alpha is refused with an error naming it, "
        "and no file of the interrupted run changes",
        "the error text, and the bytes and modification time of every file of the interrupted run before and "
        "after (only Axolotl's own debug.log may grow: its CLI opens it before any plugin runs)",
        trl=(R + "test_resuming_with_a_changed_table_or_alpha_is_refused",),
        axolotl=(X + "test_resume_with_other_data_or_alpha_is_refused_and_changes_no_file",),
    ),
    Case(
        "packing_equals_unpacked",
        "packed / padding-free batches give the loss and gradient of the same tokens unpacked (relative 1e-5)",
        "the formula on each packed sequence scored alone (split where position_ids restart), fresh float64 model; "
        "the unpacked run of the same data (TRL); the table against a hand count",
        trl=(C + "test_packing_and_padding_free_equal_the_same_tokens_unpacked",
             C + "test_packing_counts_the_same_table_as_unpacked_for_text_data"),
        axolotl=(X + "test_sample_packing_equals_the_same_tokens_unpacked",),
    ),
    Case(
        "qlora",
        "with 4-bit (nf4) base weights the loss and LoRA gradients are PDL's",
        "TRL: the direct formula on the float dequantisation of the same 4-bit weights; Axolotl: the same 4-bit "
        "model loaded directly with transformers + bitsandbytes",
        trl=(C + "test_qlora_loss_and_lora_gradients_equal_direct_formula",
             Q + "test_lora_gradients_are_exact_after_an_eval_pass_through_the_trainer"),
        axolotl=(A + "test_qlora_logged_loss_equals_independent_pdl",),
    ),
    Case(
        "exempt_special_tokens",
        "with pdl_exempt_special_tokens the tokenizer's special tokens (the trained end-of-turn token) weigh the "
        "count-weighted mean of equation (3)'s weights, every other token equation (3), and the loss follows",
        "equation (3) on the counts in float64, the special ids set to sum(count * w) / sum(count) by hand, and the "
        "direct formula on full logits (TRL) or a fresh model from the recorded LoRA weights (Axolotl)",
        trl=(T + "test_exempt_special_tokens_train_eos_with_the_mean_weight",),
        axolotl=(A + "test_exempt_special_tokens_logged_loss_equals_independent_pdl",),
    ),
    Case(
        "weight_floor",
        "with pdl_min_weight m every weight is max(eq. (3), m * the count-weighted mean of eq. (3)), before the "
        "exemption; the loss and gradient follow, under 4 x 1 accumulation as in one batch of 4 (relative <= 1e-5)",
        "equation (3) on hand-counted tokens in float64 with the floor written out, and the direct formula on full "
        "logits (TRL) or a fresh float64 model from the same weights (Axolotl)",
        trl=(V + "test_weight_floor_loss_and_gradient_equal_direct_formula",),
        axolotl=(X + "test_weight_floor_loss_and_gradient_equal_independent_pdl",),
    ),
    Case(
        "ce_anchor",
        "with pdl_ce_mix lambda a step's loss is lambda * (mean nll of its trained tokens) + (1 - lambda) * (its "
        "PDL), each over every micro-batch of the step; 4 x 1 accumulation equals one batch of 4 (relative <= 1e-5); "
        "ce_loss and pdl_loss are logged",
        "both parts written out on full logits in float64 over the same rows, and their gradient",
        trl=(V + "test_ce_anchor_loss_and_gradient_equal_direct_formula",),
        axolotl=(X + "test_ce_anchor_loss_and_gradient_equal_independent_pdl",),
    ),
    Case(
        "frequency_prior",
        "with pdl_prior_path and pdl_prior_mix beta the weights are eq. (3) on (1 - beta) * task + beta * prior "
        "frequencies; the loss and gradient follow (4 x 1 accumulation as one batch of 4); the prior is copied into "
        "the run folder and recorded in pdl_config.json",
        "both tables' counts mixed by hand in float64, eq. (3), the direct formula on full logits (TRL) or a fresh "
        "float64 model (Axolotl)",
        trl=(V + "test_prior_loss_and_gradient_equal_direct_formula",),
        axolotl=(X + "test_prior_loss_and_gradient_equal_independent_pdl",),
    ),
    Case(
        "variants_with_packing",
        "with the floor, the anchor and the prior, packed / padding-free batches give the loss of the same tokens "
        "unpacked (relative 1e-5)",
        "the direct formula on each packed sequence scored alone, with the option written out",
        trl=(V + "test_variants_with_packing_equal_the_same_tokens_unpacked",),
        axolotl=(X + "test_variants_with_sample_packing_equal_independent_pdl",),
    ),
    Case(
        "variants_resume_refuses_changed_value",
        "resuming with a changed pdl_min_weight, pdl_ce_mix, pdl_prior_mix or prior table is refused with an error "
        "naming it, and no file of the interrupted run changes",
        "the error text, and the bytes of every file of the interrupted run before and after",
        trl=(V + "test_resume_with_a_changed_variant_is_refused",),
        axolotl=(X + "test_resume_with_a_changed_variant_is_refused_and_changes_no_file",),
    ),
    Case(
        "end_of_turn_guard",
        "without the exemption, an end-of-turn token weighing under a quarter of the mean weight gives one warning "
        "line; its share of the step's weight is logged as pdl_end_of_turn_weight_share",
        "the share written out from hand counts: sum of w(eos) over its trained positions / sum of w over all",
        trl=(V + "test_end_of_turn_guard_warns_and_logs_its_weight_share",),
        axolotl=(X + "test_end_of_turn_guard_warns_and_logs_its_weight_share",),
    ),
)


def missing_tests(host: str) -> list[str]:
    """Cases without a test on `host`, and referenced tests that do not exist (files parsed, nothing imported)."""
    problems = []
    for case in CASES:
        tests = case.tests(host)
        if not tests:
            problems.append(f"{case.name}: no {host} test")
        for node in tests:
            path, _, name = node.partition("::")
            file = REPO / path
            if not file.is_file():
                problems.append(f"{case.name}: {path} does not exist")
                continue
            tree = ast.parse(file.read_text(encoding="utf-8"))
            names = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            if name not in names:
                problems.append(f"{case.name}: {node} does not exist")
    return problems


def matrix() -> str:
    """The case x host matrix as a markdown table (test names without their `test_` prefix)."""
    def cell(tests):
        return "<br>".join(f"`{Path(t.split('::')[0]).name}::{t.split('::')[1]}`" for t in tests)

    lines = ["| case | checked against | TRL | Axolotl | known gap |", "|---|---|---|---|---|"]
    lines += [f"| `{c.name}` | {c.against} | {cell(c.trl)} | {cell(c.axolotl)} | {c.known_gap} |" for c in CASES]
    return "\n".join(lines)


if __name__ == "__main__":
    print(matrix())
