"""The rule that picks the shipped settings (`pdl_plugin.study.choice`, docs/results.md "What the defaults will
follow") on hand-made paired runs whose verdicts are plain by construction: every difference below has the same sign
on all three seeds (an interval that excludes 0) or changes sign (one that does not)."""

from pdl_plugin.study.choice import default_choice, judge_task, recipe_choice

CE_ROUGE = [0.20, 0.22, 0.21]
CE_RARE = [4.0, 4.2, 4.1]


def _run(alpha: float, seed: int, rouge: float, rare_ce: float, at_limit: float = 0.0) -> dict:
    options = {"min_weight": "1"} if alpha else {}
    greedy = {"rouge_l": rouge, "hit_token_limit": at_limit, "rare_token_recall": 0.1, "self_information_bits": 9.0}
    return {"alpha": alpha, "warmup_steps": 0, "exempt": alpha > 0, "options": options, "seed": seed,
            "generation": {"greedy": greedy},
            "validation": {"ce_by_bucket": [{"bucket": "1-2", "ce": rare_ce}]}}


def _task(**arms) -> dict[str, list[dict]]:
    """CE and each arm (name -> ([ROUGE-L − CE per seed], [rare CE − CE per seed], [at-limit share per seed]))."""
    runs = {"alpha-0": [_run(0.0, s, CE_ROUGE[s], CE_RARE[s]) for s in range(3)]}
    for name, (rouge, rare, *limit) in arms.items():
        at_limit = limit[0] if limit else [0.0] * len(rouge)
        runs[name] = [_run(0.5, s, CE_ROUGE[s] + rouge[s], CE_RARE[s] + rare[s], at_limit[s])
                      for s in range(len(rouge))]
    return runs


GAIN = [-0.30, -0.32, -0.31]  # rare-token CE down on every seed: the gain
NO_GAIN = [-0.10, 0.10, 0.00]


def test_a_recipe_takes_the_arm_that_helps_most():
    judged = judge_task("toy", _task(
        small=([0.010, 0.012, 0.011], GAIN),  # helps, output +0.011
        large=([0.020, 0.030, 0.025], NO_GAIN),  # helps, output +0.025: helping needs no rare-token gain
        tie=([0.000, 0.001, -0.001], GAIN),  # neither
        single=([0.100], GAIN),  # one seed: not judged
    ))
    assert {j.arm: j.verdict for j in judged} == {"small": "helps", "large": "helps", "tie": "neither"}
    choice = recipe_choice(judged)
    assert choice.arm == "large" and not choice.warning
    assert choice.reason == "helps: better outputs (output +0.025 over seeds 0, 1, 2)"


def test_without_help_a_recipe_takes_the_least_loss_among_arms_that_keep_the_rare_gain():
    judged = judge_task("toy", _task(
        keeps=([-0.002, 0.001, -0.004], GAIN),  # neither; output -0.0017; keeps the gain
        loses=([-0.001, 0.000, -0.002], NO_GAIN),  # neither; smaller loss (-0.001) but no rare-token gain
        harms=([-0.050, -0.060, -0.055], GAIN),  # harms
        runs_on=([0.000, 0.001, -0.001], GAIN, [0.10, 0.12, 0.11]),  # harms: more replies at the limit
    ))
    assert {j.arm: (j.verdict, j.rare_gain) for j in judged} == {
        "keeps": ("neither", True), "loses": ("neither", False), "harms": ("harms", True),
        "runs_on": ("harms", True)}
    choice = recipe_choice(judged)
    assert choice.arm == "keeps" and not choice.warning
    assert choice.reason == ("no arm helps; the best output difference (-0.002 over seeds 0, 1, 2) among the arms "
                             "that harm nothing and keep the rare-token gain")  # (-0.002 + 0.001 - 0.004) / 3


def test_when_every_arm_harms_a_recipe_takes_the_least_harmful_with_a_warning_and_ce_without_a_gain():
    judged = judge_task("toy", _task(worse=([-0.05, -0.06, -0.055], GAIN), bad=([-0.02, -0.03, -0.025], GAIN)))
    choice = recipe_choice(judged)
    assert choice.arm == "bad" and choice.warning
    no_gain = recipe_choice(judge_task("toy", _task(bad=([-0.02, -0.03, -0.025], NO_GAIN))))
    assert no_gain.arm is None and no_gain.warning


def test_the_default_helps_most_tasks_and_harms_none():
    by_task = {
        "one": judge_task("one", _task(x=([0.01, 0.012, 0.011], GAIN), y=([0.02, 0.03, 0.025], GAIN),
                                       z=([0.01, 0.012, 0.011], GAIN))),
        "two": judge_task("two", _task(x=([0.000, 0.001, -0.001], GAIN), y=([-0.05, -0.06, -0.055], GAIN),
                                       z=([0.01, 0.012, 0.011], GAIN))),
        "three": judge_task("three", _task(x=([0.000, 0.001, -0.001], GAIN), y=([0.0, 0.001, -0.001], GAIN),
                                           z=([0.000, 0.001, -0.001], GAIN))),
    }
    # y helps "one" most but harms "two"; z helps two tasks, x one
    choice = default_choice(by_task)
    assert (choice.arm, choice.reason, choice.warning) == ("z", "helps one, two and harms no task", False)


def test_without_help_the_default_keeps_the_gain_everywhere_with_the_least_mean_loss():
    by_task = {
        "one": judge_task("one", _task(x=([-0.002, 0.001, -0.004], GAIN), w=([0.0, 0.001, -0.001], NO_GAIN))),
        "two": judge_task("two", _task(x=([-0.003, 0.000, -0.003], GAIN), w=([0.0, 0.001, -0.001], GAIN))),
    }
    # w loses less output (0 against -0.002) but not the rare-token gain on "one"
    assert default_choice(by_task).arm == "x"
    # an arm with seeds 1 and 2 on one task only cannot be the default
    partial = {"one": by_task["one"], "two": judge_task("two", _task(v=([0.0, 0.001, -0.001], GAIN)))}
    undecided = default_choice(partial)
    assert undecided.arm is None and not undecided.decided and undecided.reason.startswith("undecided")


def test_the_default_waits_for_an_arm_judged_on_two_tasks_to_be_judged_on_the_third():
    held, harmful = ([0.000, 0.001, -0.001], GAIN), ([-0.05, -0.06, -0.055], GAIN)
    by_task = {"one": judge_task("one", _task(x=harmful, y=held)), "two": judge_task("two", _task(x=held, y=held)),
               "three": judge_task("three", _task(x=held))}
    # x is judged everywhere (and harms "one"); y, judged on two tasks, still has its third-task seeds to come
    waiting = default_choice(by_task)
    assert (waiting.arm, waiting.decided) == (None, False)
    assert waiting.reason.startswith("undecided: y is not yet judged on three (")
    by_task["three"] = judge_task("three", _task(x=held, y=held))
    assert default_choice(by_task).arm == "y"  # harms nothing, keeps the gain; x harms "one"


def test_an_arm_that_helps_by_specificity_says_so():
    runs = _task(specific=([0.000, 0.001, -0.001], GAIN))
    for seed, run in enumerate(runs["specific"]):  # rare-token recall up on every seed, outputs held
        run["generation"]["greedy"]["rare_token_recall"] += [0.04, 0.05, 0.045][seed]
    choice = recipe_choice(judge_task("toy", runs))
    assert (choice.arm, choice.reason) == ("specific", "helps: more specific replies, outputs held (output +0.000 "
                                                       "over seeds 0, 1, 2)")
