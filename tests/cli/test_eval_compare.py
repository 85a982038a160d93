"""`pdl-eval` and `pdl-compare` end to end on the embedded SmolLM2 with a tiny local data set (a few CPU seconds)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import PROMPT_COMPLETION
from pdl_plugin.cli.compare import compare
from pdl_plugin.cli.compare import main as compare_main
from pdl_plugin.cli.eval import evaluate_cli
from pdl_plugin.cli.eval import main as eval_main
from pdl_plugin.cli.sft import train
from pdl_plugin.errors import PDLConfigError

ROWS = [dict(zip(PROMPT_COMPLETION, values)) for values in zip(*PROMPT_COMPLETION.values())]


def _recipe(tmp_path) -> str:
    data = tmp_path / "data"
    data.mkdir()
    for split, rows in (("train", ROWS), ("validation", ROWS[:3])):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: embedded:SmolLM2-135M-Instruct\ndataset_name: {data}\ndataset_train_split: train\n"
        "dataset_test_split: validation\nuse_peft: true\nlora_r: 4\nlora_target_modules: [q_proj, v_proj]\n"
        "loss_type: pdl\npdl_alpha: 0.5\nmax_steps: 2\nper_device_train_batch_size: 2\nlogging_steps: 1\n"
        "learning_rate: 1.0e-3\nmax_length: 64\nbf16: false\nuse_cpu: true\nreport_to: none\nsave_strategy: 'no'\n"
        f"gradient_checkpointing: false\ndisable_tqdm: true\noutput_dir: {tmp_path / 'out'}\n"
    )
    return str(recipe)


def _direct_validation_ce(adapter, tokenizer, end_only: bool = False) -> float:
    """Mean NLL of completion + eos given the prompt, from the full logits: independent of TRL's preparation (with
    `end_only`, of the eos that ends each reply)."""
    from peft import PeftModel

    from pdl_plugin.data.embedded_model import resolve_embedded_model

    base = AutoModelForCausalLM.from_pretrained(resolve_embedded_model("embedded:SmolLM2-135M-Instruct"))
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    nll, tokens = 0.0, 0
    for row in ROWS[:3]:
        prompt_ids = tokenizer(row["prompt"])["input_ids"]
        full = tokenizer(row["prompt"] + row["completion"] + tokenizer.eos_token)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([full])).logits[0].double()
        log_probs = torch.log_softmax(logits[:-1], -1)
        targets = torch.tensor(full[1:])
        picked = -log_probs[torch.arange(len(targets)), targets][len(prompt_ids) - 1 :]
        picked = picked[-1:] if end_only else picked
        nll, tokens = nll + picked.sum().item(), tokens + len(picked)
    return nll / tokens


def test_pdl_eval_scores_an_adapter_and_writes_json(tmp_path, tokenizer, capsys):
    recipe = _recipe(tmp_path)
    train(["--config", recipe])
    adapter = tmp_path / "out"
    result = evaluate_cli(["--adapter", str(adapter), "--config", recipe, "--max_prompts", "2",
                           "--max_new_tokens", "4", "--output", str(tmp_path / "eval.json")])
    assert json.loads((tmp_path / "eval.json").read_text())["prompts"] == result["prompts"] == 2
    assert set(result["generation"]) == {"greedy", "sampled"}
    greedy = result["generation"]["greedy"]
    assert 0 <= greedy["rouge_l"] <= 1 and greedy["mean_tokens"] <= 4
    assert len(result["samples"]) == 2 and len(result["ranks"]["greedy"]) == round(greedy["mean_tokens"] * 2)
    # validation losses cover the same 2 validation rows; PDL at the recipe's alpha
    assert result["validation"]["rows"] == 2 and result["validation"]["pdl_alpha"] == 0.5
    assert result["validation"]["ce"] > 0 and result["validation"]["pdl"] > 0
    out = capsys.readouterr().out
    assert "rouge_l" in out and "eval_num_tokens" not in out
    assert "the first 2 prompts of the `validation` split" in " ".join(out.split())
    assert result["validation"]["pdl_unseen_weight"] == "rarest" and len(result["validation"]["ce_by_bucket"]) == 5
    assert sum(b["tokens"] for b in result["validation"]["ce_by_bucket"]) == result["validation"]["tokens"]
    # alpha 0 as reference: the PDL is the cross-entropy
    zero = evaluate_cli(["--adapter", str(adapter), "--config", recipe, "--max_prompts", "3", "--max_new_tokens",
                         "2", "--no_sampled", "--reference_alpha", "0"])
    assert zero["validation"]["pdl"] == pytest.approx(zero["validation"]["ce"], rel=1e-5)
    assert zero["validation"]["ce"] == pytest.approx(_direct_validation_ce(adapter, tokenizer), rel=1e-4)
    ends = zero["validation"]["end_of_reply"]
    assert ends["rows"] == 3 and ends["end_tokens"] == [tokenizer.eos_token_id]
    assert ends["ce"] == pytest.approx(_direct_validation_ce(adapter, tokenizer, end_only=True), rel=1e-4)
    assert (adapter / "eval.json").is_file() and set(zero["generation"]) == {"greedy"}


def test_pdl_eval_without_a_training_table_says_how_to_get_one(tmp_path, capsys):
    recipe = _recipe(tmp_path)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["--adapter", str(tmp_path / "adapter"), "--config", recipe])
    assert exit_info.value.code == 2 and "pdl-freq" in capsys.readouterr().err


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    message = err[err.index("error:"):]  # after any progress bar of the model loading
    assert "Traceback" not in err and message.count("error:") == 1
    return " ".join(message.split())


def test_pdl_eval_on_a_missing_adapter_folder_names_the_folder(tmp_path, capsys):
    recipe = _recipe(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["--adapter", str(tmp_path / "no-such-run"), "--config", recipe])
    err = _one_line_error(capsys)
    assert exit_info.value.code == 2 and "adapter folder" in err and "no-such-run does not exist" in err
    assert "table" not in err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        eval_main(["--adapter", str(tmp_path / "empty"), "--config", recipe])
    assert "holds neither a LoRA adapter" in _one_line_error(capsys)


def _tiny_adapter(folder, tokenizer):
    """A LoRA adapter trained on a 16-wide model (the recipe's base is 576 wide), with a matching table."""
    from peft import LoraConfig, get_peft_model

    from conftest import make_tiny_model
    from pdl_plugin.frequency import TABLE_FILENAME, FrequencyTable, tokenizer_fingerprint

    model = get_peft_model(make_tiny_model(len(tokenizer)), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(str(folder))
    counts = torch.ones(len(tokenizer), dtype=torch.int64)
    FrequencyTable(counts, tokenizer_fingerprint(tokenizer), "completion_only", "x").save(folder / TABLE_FILENAME)


def test_an_adapter_of_another_base_model_is_one_clear_error(tmp_path, tokenizer, capsys):
    recipe = _recipe(tmp_path)
    _tiny_adapter(tmp_path / "adapter", tokenizer)
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["--adapter", str(tmp_path / "adapter"), "--config", recipe])
    err = _one_line_error(capsys)
    assert exit_info.value.code == 2 and "does not fit the base model" in err
    assert "[4, 16] in the adapter but [4, 576] in the base model" in err and "--model_name_or_path" in err
    # pdl-compare evaluating a trained run (train.json, no `done`) whose adapter does not fit the recipe's base model
    run = tmp_path / "cmp" / "toy" / "alpha-0" / "seed-0"
    _tiny_adapter(run, tokenizer)
    (run / "train.json").write_text(json.dumps({"log_history": [], "global_step": 1, "cpu_s": 1.0, "wall_s": 1.0}))
    with pytest.raises(SystemExit) as exit_info:
        compare_main(["--config", recipe, "--alphas", "0", "--seeds", "0", "--outdir", str(tmp_path / "cmp"),
                      "--task", "toy", "--max_prompts", "1"])
    err = _one_line_error(capsys)
    assert exit_info.value.code == 2 and "[4, 16] in the adapter but [4, 576] in the base model" in err


def test_pdl_compare_report_only_with_a_missing_results_file(tmp_path, capsys):
    recipe = _recipe(tmp_path)
    run = tmp_path / "cmp" / "toy" / "alpha-0" / "seed-0"
    run.mkdir(parents=True)
    (run / "done").write_text("ok\n")
    argv = ["--config", recipe, "--alphas", "0", "--seeds", "0", "--outdir", str(tmp_path / "cmp"), "--task", "toy",
            "--report_only"]
    with pytest.raises(SystemExit) as exit_info:
        compare_main(argv)
    err = _one_line_error(capsys)
    assert exit_info.value.code == 2 and "has no results.json" in err and "seed-0" in err
    with pytest.raises(SystemExit) as exit_info:
        compare_main([*argv, "--results_dir", str(tmp_path / "empty-results")])
    assert exit_info.value.code == 2 and "No finished run" in _one_line_error(capsys)


def test_pdl_compare_trains_each_arm_evaluates_reports_and_resumes(tmp_path):
    recipe = _recipe(tmp_path)
    outdir = tmp_path / "cmp"
    argv = ["--config", recipe, "--alphas", "0,1", "--seeds", "3", "--alpha_warmup_steps", "1", "--outdir",
            str(outdir), "--max_prompts", "2", "--max_new_tokens", "3", "--max_steps", "1", "--task", "toy"]
    report = compare(argv)
    runs = {p.parent.parent.name for p in outdir.glob("toy/*/seed-3/done")}
    assert runs == {"alpha-0", "alpha-1", "alpha-1-warmup-1"}
    baseline = json.loads((outdir / "toy/alpha-0/seed-3/results.json").read_text())
    assert baseline["alpha"] == 0 and baseline["seed"] == 3 and baseline["validation"]["pdl_alpha"] == 0.5
    settings = json.loads((outdir / "toy/alpha-1-warmup-1/seed-3/pdl_config.json").read_text())
    assert settings["pdl_alpha"] == 1.0 and settings["pdl_alpha_warmup_steps"] == 1
    text = report.read_text()
    assert "| alpha 0 (CE baseline) | 1 |" in text and "alpha 1, warm-up 1 steps" in text and "| references |" in text
    assert (outdir / "toy/toy-loss-curves.png").stat().st_size > 5000
    assert (outdir / "toy/toy-frequency-rank.png").stat().st_size > 5000
    # resumable: finished runs are skipped; a run whose evaluation was lost is evaluated again, not retrained
    trained = (outdir / "toy/alpha-1/seed-3/train.json").stat().st_mtime_ns
    kept = (outdir / "toy/alpha-0/seed-3/results.json").stat().st_mtime_ns
    (outdir / "toy/alpha-1/seed-3/done").unlink()
    compare(argv)
    assert (outdir / "toy/alpha-1/seed-3/done").is_file()
    assert (outdir / "toy/alpha-1/seed-3/train.json").stat().st_mtime_ns == trained
    assert (outdir / "toy/alpha-0/seed-3/results.json").stat().st_mtime_ns == kept
    # an evaluation of the base model beside the runs (pdl-eval --output OUTDIR/TASK/base-model.json) is one more row
    (outdir / "toy/base-model.json").write_text((outdir / "toy/alpha-0/seed-3/results.json").read_text())
    # --report_only redraws the report elsewhere, figures beside it, showing the command that made the runs
    elsewhere = compare([*argv, "--report_only", "--report", str(tmp_path / "docs" / "toy.md")])
    assert (tmp_path / "docs" / "toy-loss-curves.png").is_file() and "](toy-frequency-rank.png)" in elsewhere.read_text()
    assert "--report" not in elsewhere.read_text() and "--max_steps 1" in elsewhere.read_text()
    assert elsewhere.read_text().count("| base model, no finetuning (pdl-eval) | 1 |") == 2  # greedy and sampled
    assert "### Paired differences against CE" in elsewhere.read_text()


def test_pdl_compare_keeps_small_results_and_resumes_from_them(tmp_path):
    recipe = _recipe(tmp_path)
    results = tmp_path / "docs" / "results"
    argv = ["--config", recipe, "--alphas", "0,1", "--seeds", "3", "--max_prompts", "2", "--max_new_tokens", "3",
            "--max_steps", "1", "--task", "toy", "--results_dir", str(results), "--no_sampled"]
    compare([*argv, "--outdir", str(tmp_path / "machine-a")])
    for arm in ("alpha-0", "alpha-1"):
        kept = results / "toy" / arm / "seed-3"
        assert sorted(p.name for p in kept.iterdir()) == ["results.json", "train.json"]  # no adapter
        train = json.loads((kept / "train.json").read_text())
        assert train["global_step"] == 1 and train["examples_seen"] == 2 and train["log_history"]
    # another machine, a fresh outdir: every run is found in the results folder, nothing is trained again
    report = compare([*argv, "--outdir", str(tmp_path / "machine-b"), "--report", str(tmp_path / "docs" / "toy.md")])
    assert not (tmp_path / "machine-b" / "toy" / "alpha-0").exists()
    text = report.read_text()
    assert "**alpha 1 − CE**" in text and "| val CE |" in text and "| alpha 0 (CE baseline) | 1 |" in text


def test_pdl_compare_shards_split_the_plan_without_overlap(tmp_path, capsys):
    """--shard 1/2 and 2/2 take every other run of the plan (seed by seed: alpha-0 s3, alpha-1 s3, alpha-0 s4,
    alpha-1 s4), whatever is finished already and in whichever order they start; a kept run is skipped."""
    recipe = _recipe(tmp_path)
    results = tmp_path / "results"
    argv = ["--config", recipe, "--alphas", "0,1", "--seeds", "3,4", "--max_prompts", "1", "--max_new_tokens", "2",
            "--max_steps", "1", "--task", "toy", "--results_dir", str(results), "--no_sampled",
            "--outdir", str(tmp_path / "out")]

    def finished():
        return sorted(str(p.parent.relative_to(results / "toy")) for p in results.glob("toy/*/*/results.json"))

    compare([*argv, "--seeds", "3", "--alphas", "0"])  # run 1 of the plan is finished before the shards start
    compare([*argv, "--shard", "2/2"])  # runs 2 and 4
    out = " ".join(capsys.readouterr().out.split())
    assert "Shard 2/2 (runs 2, 4 of 4): 2 to do, alpha-1 seed 3, alpha-1 seed 4" in out
    assert finished() == ["alpha-0/seed-3", "alpha-1/seed-3", "alpha-1/seed-4"]
    report = compare([*argv, "--shard", "1/2"])  # runs 1 (kept: skipped) and 3
    assert finished() == ["alpha-0/seed-3", "alpha-0/seed-4", "alpha-1/seed-3", "alpha-1/seed-4"]
    assert "--shard" not in report.read_text()


def test_pdl_compare_skips_a_run_that_another_process_holds(tmp_path, capsys):
    """A run whose lock file another process holds is left to it (not trained, no results written here); once the
    lock is free, a rerun trains it and skips the finished one."""
    from filelock import FileLock

    out = tmp_path / "out"
    argv = ["--config", _recipe(tmp_path), "--alphas", "0,1", "--seeds", "3", "--max_prompts", "1",
            "--max_new_tokens", "2", "--max_steps", "1", "--task", "toy", "--no_sampled", "--outdir", str(out)]
    (out / "toy/alpha-1").mkdir(parents=True)
    other = FileLock(out / "toy/alpha-1/seed-3.lock")  # what a second pdl-compare holds while it trains the run
    other.acquire(timeout=0)
    try:
        compare(argv)
    finally:
        other.release()
    text = " ".join(capsys.readouterr().out.split())
    assert "toy alpha-1 seed 3: running in another process, skipped" in text
    assert (out / "toy/alpha-0/seed-3/results.json").is_file()
    assert not (out / "toy/alpha-1/seed-3").exists()
    compare(argv)
    text = " ".join(capsys.readouterr().out.split())
    assert "toy alpha-0 seed 3: results in" in text and "alpha-0 seed 3: finished" not in text  # not redone
    assert "toy alpha-1 seed 3: finished in" in text and (out / "toy/alpha-1/seed-3/results.json").is_file()


def test_two_pdl_compare_processes_share_the_plan_out(tmp_path):
    """The same command started twice at once: every run is trained by exactly one of the two processes, and
    together they finish the plan (what the two one-thread processes of benchmarks/study.sh rely on)."""
    results = tmp_path / "results"
    command = [sys.executable, "-m", "pdl_plugin.cli.compare", "--config", _recipe(tmp_path), "--alphas", "0,0.5,1",
               "--seeds", "3", "--max_prompts", "1", "--max_new_tokens", "2", "--max_steps", "1", "--task", "toy",
               "--no_sampled", "--outdir", str(tmp_path / "out"), "--results_dir", str(results)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=environment) for _ in range(2)]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    trained = sorted(re.findall(r"toy (alpha-[0-9.]+) seed 3: finished in", "\n".join(outputs)))
    assert trained == ["alpha-0", "alpha-0.5", "alpha-1"], outputs  # each once, whichever process took it
    assert all((results / f"toy/{arm}/seed-3/results.json").is_file() for arm in trained)


def test_a_failed_run_does_not_stop_the_study_and_the_exit_names_it(tmp_path, monkeypatch, capsys):
    """A run that fails (our error, or any other) is reported and the process goes on to the next run; at the end the
    report holds the finished runs and the command exits 2 naming the failed ones. `--fail_fast` stops at the first."""
    import pdl_plugin.study.runner as compare_module

    real_run_one = compare_module.run_one

    def run_one(config, overrides, folder, arm, seed, *args, **kwargs):
        if arm.alpha == 0:
            raise PDLConfigError("the training table of this run is missing: recount it with pdl-freq")
        if arm.alpha == 0.5:
            raise RuntimeError("a bug deep inside")
        return real_run_one(config, overrides, folder, arm, seed, *args, **kwargs)

    monkeypatch.setattr(compare_module, "run_one", run_one)
    out = tmp_path / "out"
    argv = ["--config", _recipe(tmp_path), "--alphas", "0,0.5,1", "--seeds", "3", "--max_prompts", "1",
            "--max_new_tokens", "2", "--max_steps", "1", "--task", "toy", "--no_sampled", "--outdir", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        compare_main(argv)
    captured = capsys.readouterr()
    printed, err = " ".join(captured.out.split()), " ".join(captured.err.split())
    assert exit_info.value.code == 2
    assert "2 runs of this process failed (the report has the finished runs only;" in err
    assert "alpha-0 seed 3: the training table of this run is missing" in err  # each failure with its reason
    assert "alpha-0.5 seed 3: RuntimeError: a bug deep inside" in err and "alpha-1 seed 3" not in err
    assert "toy alpha-0 seed 3: failed: the training table of this run is missing" in printed
    assert "toy alpha-0.5 seed 3: failed with RuntimeError:" in printed and "a bug deep inside" in printed
    assert "toy alpha-1 seed 3: finished in" in printed  # the run after the failures still ran
    assert (out / "toy/alpha-1/seed-3/results.json").is_file()
    report = (out / "toy/report.md").read_text()
    assert "alpha 1" in report and "alpha 0 (CE baseline)" not in report

    with pytest.raises(SystemExit) as exit_info:  # --fail_fast: the first failure ends the command
        compare_main([*argv, "--fail_fast", "--outdir", str(tmp_path / "fast")])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and "the training table of this run is missing" in captured.err
    assert "alpha-0.5 seed 3" not in captured.out and not (tmp_path / "fast/toy/alpha-1").exists()

    with pytest.raises(SystemExit):  # every run failing: no report to draw, and the error says so
        compare_main([*argv, "--alphas", "0,0.5", "--outdir", str(tmp_path / "none")])
    assert "no run finished, so no report" in " ".join(capsys.readouterr().err.split())


def test_pdl_compare_exempt_arm_trains_with_special_tokens_exempt_and_is_scored_like_the_others(tmp_path):
    """--exempt_alphas 1 adds the arm alpha-1-exempt: it trains with pdl_exempt_special_tokens (its saved config lists
    the exempt ids, eos among them), while its validation PDL uses the same weights as every other arm's."""
    out = tmp_path / "out"
    report = compare(["--config", _recipe(tmp_path), "--alphas", "0,1", "--exempt_alphas", "1", "--seeds", "3",
                      "--max_prompts", "1", "--max_new_tokens", "2", "--max_steps", "1", "--task", "toy",
                      "--no_sampled", "--outdir", str(out)])
    exempt, plain = out / "toy/alpha-1-exempt/seed-3", out / "toy/alpha-1/seed-3"
    trained = json.loads((exempt / "pdl_config.json").read_text())
    assert trained["pdl_exempt_special_tokens"] is True and trained["exempt_token_ids"]
    assert json.loads((plain / "pdl_config.json").read_text())["exempt_token_ids"] == []
    argv = json.loads((exempt / "train.json").read_text())["argv"]
    assert argv[argv.index("--pdl_exempt_special_tokens") + 1] == "true"
    result = json.loads((exempt / "results.json").read_text())
    assert result["exempt"] is True and result["arm"] == "alpha-1-exempt"
    assert result["validation"]["pdl_exempt_token_ids"] == []  # scored with the same weights as alpha-1
    assert "alpha 1, special tokens exempt" in report.read_text()


def test_pdl_compare_arm_of_any_settings_trains_with_them_and_records_where_it_ran(tmp_path):
    """--arm alpha=1,exempt=true,ce_mix=0.5 trains with the exemption and the CE anchor (the saved config says so, and
    each logged step's loss is 0.5 * CE + 0.5 * PDL of the same tokens); its results name the options, the commit of
    this checkout and the libraries' versions; the report gives the arm its own row."""
    from importlib import metadata

    out = tmp_path / "out"
    report = compare(["--config", _recipe(tmp_path), "--alphas", "0", "--arm", "alpha=1,exempt=true,ce_mix=0.5",
                      "--seeds", "3", "--max_prompts", "1", "--max_new_tokens", "2", "--max_steps", "2", "--task",
                      "toy", "--no_sampled", "--outdir", str(out)])
    run = out / "toy/alpha-1-exempt-ce_mix-0.5/seed-3"
    trained = json.loads((run / "pdl_config.json").read_text())
    assert trained["pdl_ce_mix"] == 0.5 and trained["pdl_exempt_special_tokens"] is True
    train = json.loads((run / "train.json").read_text())
    steps = [entry for entry in train["log_history"] if "pdl_loss" in entry]
    assert len(steps) == 2
    for entry in steps:
        assert entry["loss"] == pytest.approx(0.5 * entry["ce_loss"] + 0.5 * entry["pdl_loss"], rel=1e-4)
    result = json.loads((run / "results.json").read_text())
    assert result["options"] == {"ce_mix": "0.5"} and result["exempt"] is True
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip()
    for record in (train["provenance"], result["provenance"]):
        assert record["commit"] == head and record["versions"]["torch"] == metadata.version("torch")
        assert record["versions"]["trl"] == metadata.version("trl") and record["cpu"]
    text = report.read_text()
    assert "alpha 1, special tokens exempt, ce_mix 0.5" in text and "### Provenance" in text and head[:10] in text


def test_pdl_compare_resumes_a_run_cut_off_mid_training_from_its_checkpoint(tmp_path, monkeypatch):
    """With --checkpoint_steps, a run killed after its step-2 checkpoint resumes from it: the same losses at every step
    and the same validation CE as the same run never cut off (same batches, restored random states)."""
    from transformers import TrainerCallback

    import pdl_plugin.recipe as recipe_module

    argv = ["--config", _recipe(tmp_path), "--alphas", "0.5", "--seeds", "3", "--max_prompts", "1",
            "--max_new_tokens", "2", "--max_steps", "4", "--task", "toy", "--no_sampled", "--checkpoint_steps", "2"]
    compare([*argv, "--outdir", str(tmp_path / "whole")])

    class CutOff(BaseException):  # a kill, not an error: pdl-compare goes on after a failed run, not after this
        pass

    class CutOffAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise CutOff

    run_recipe = recipe_module.run_recipe
    monkeypatch.setattr(recipe_module, "run_recipe",
                        lambda argv, callbacks=None: run_recipe(argv, [*(callbacks or []), CutOffAtStep3()]))
    with pytest.raises(CutOff):
        compare([*argv, "--outdir", str(tmp_path / "cut")])
    monkeypatch.undo()
    run = tmp_path / "cut/toy/alpha-0.5/seed-3"
    assert not (run / "train.json").exists() and (run / "checkpoint-2/trainer_state.json").is_file()
    before = json.loads((run / "checkpoint-2/study_timing.json").read_text())
    assert before["wall_s"] > 0 and before["cpu_s"] > 0

    report = compare([*argv, "--outdir", str(tmp_path / "cut")])
    assert "--checkpoint_steps" not in report.read_text()  # how often runs could resume is not part of the study
    resumed = json.loads((run / "train.json").read_text())
    whole = json.loads((tmp_path / "whole/toy/alpha-0.5/seed-3/train.json").read_text())

    def losses(train):
        return {entry["step"]: entry["loss"] for entry in train["log_history"] if "loss" in entry}

    assert resumed["resumed_from"] == "checkpoint-2" and resumed["global_step"] == 4 and "resumed_from" not in whole
    assert sorted(losses(resumed)) == [1, 2, 3, 4]
    assert losses(resumed) == pytest.approx(losses(whole), rel=1e-5)
    assert resumed["wall_s"] > before["wall_s"]  # the time before the cut-off is counted
    assert not list(run.glob("checkpoint-*"))  # the finished run keeps only its adapter
    ce = {name: json.loads((tmp_path / name / "toy/alpha-0.5/seed-3/results.json").read_text())["validation"]["ce"]
          for name in ("whole", "cut")}
    assert ce["cut"] == pytest.approx(ce["whole"], rel=1e-5)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--alphas", "0,-1"], "finite numbers >= 0"),
        (["--alphas", "0,a"], "comma-separated numbers"),
        (["--seeds", "x"], "whole numbers"),
        (["--pdl_alpha", "0.3"], "sets --pdl_alpha itself"),
        (["--alphas", "0", "--alpha_warmup_steps", "2"], "needs an alpha > 0"),
        (["--max_prompts", "0"], "--max_prompts must be >= 1"),
        (["--shard", "3/2"], "needs 1 <= I <= N"),
        (["--exempt_alphas", "0"], "--exempt_alphas takes alphas > 0"),
        (["--pdl_exempt_special_tokens", "true"], "sets --pdl_exempt_special_tokens itself"),
        (["--shard", "half"], "--shard must be I/N"),
        (["--checkpoint_steps", "-1"], "--checkpoint_steps must be >= 0"),
        (["--arm", "alpha=0.5,floor=1"], "unknown key 'floor'"),
        (["--arm", "min_weight=1"], "has no alpha"),
        (["--arm", "alpha=0.5,min_weight"], "KEY=VALUE pairs"),
        (["--arm", "alpha=0.5,exempt=yes"], "exempt must be true or false"),
        (["--arm", "alpha=0.5,min_weight=-1"], "--arm alpha-0.5-min_weight--1: pdl_min_weight"),
        (["--arm", "alpha=0.5,prior_path=no/such/prior.safetensors,prior_mix=0.5"], "does not exist"),
        (["--arm", "alpha=0.5,ce_mix=0.5", "--pdl_ce_mix", "0.2"], "set it in the arms only"),
        (["--arm", "alpha=0.5,exempt=true", "--pdl_min_weight", "1"], "set it in the arms only"),
        (["--pdl_max_weight", "20"], "set it in the arms only (`--arm alpha=0.5,max_weight=VALUE`)"),
        (["--arm", "alpha=0.5,prior_path=a/p.safetensors", "--arm", "alpha=0.5,prior_path=b/p.safetensors"],
         "would share the folder"),
    ],
)
def test_pdl_compare_refuses_bad_input_with_one_line(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        compare_main(["--config", _recipe(tmp_path), "--outdir", str(tmp_path / "cmp"), *extra])
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "Traceback" not in err


def test_an_arm_trains_with_exactly_the_variants_its_name_gives_whatever_the_recipe_sets(tmp_path):
    """A recipe's floor and CE anchor (a shipped recipe may carry them, or a default) reach only the arms that name
    them; the others, and every arm's evaluation, run without. A cap or a prior, which no override can switch off, is
    refused with the fix."""
    from pdl_plugin.recipe import parse_recipe
    from pdl_plugin.study.arms import parse_arm
    from pdl_plugin.study.checks import recipe_variants
    from pdl_plugin.study.runner import evaluation_overrides, training_overrides

    recipe = _recipe(tmp_path)
    Path(recipe).write_text(Path(recipe).read_text() + "pdl_min_weight: 1\npdl_ce_mix: 0.3\n")
    base = parse_recipe(["--config", recipe]).training
    assert (base.pdl_min_weight, base.pdl_ce_mix) == (1, 0.3)  # the recipe's own, as a single run would train
    assert recipe_variants(base) == [
        "The recipe's pdl_min_weight 1 applies only to the arms whose name gives min_weight; the others train without it.",
        "The recipe's pdl_ce_mix 0.3 applies only to the arms whose name gives ce_mix; the others train without it."]
    for text, floor, mix in (("alpha=0.5", 0.0, 0.0), ("alpha=0.5,ce_mix=0.5", 0.0, 0.5),
                             ("alpha=0.5,exempt=true,min_weight=2", 2.0, 0.0)):
        arm = parse_arm(text)
        trained = parse_recipe(["--config", recipe, *training_overrides(arm, 0, tmp_path / "run")]).training
        assert (trained.pdl_min_weight, float(trained.pdl_ce_mix)) == (floor, mix), text
        scored = parse_recipe(["--config", recipe, *evaluation_overrides(arm, 0, tmp_path / "run")]).training
        assert (scored.pdl_min_weight, float(scored.pdl_ce_mix), scored.pdl_exempt_special_tokens) == (0.0, 0.0, False)
    Path(recipe).write_text(Path(recipe).read_text() + "pdl_max_weight: 20\n")
    with pytest.raises(PDLConfigError, match=r"The recipe sets pdl_max_weight \(20.0\).*`--arm alpha=0.5,max_weight"):
        recipe_variants(parse_recipe(["--config", recipe]).training)


def _readme_screen_command() -> list[str]:
    """The `pdl-compare` screen in the README's "Choosing a setting", as the shell would split it."""
    import shlex

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Choosing a setting"):]
    block = section[section.index("```bash\n") + len("```bash\n"):]
    return shlex.split(block[:block.index("```")].replace("\\\n", " "))


def test_the_readme_screen_runs_the_second_studys_five_settings_against_ce(tmp_path, monkeypatch):
    """The command a user copies parses, passes every check made before the first run, and plans CE and the five
    settings the study ran (same arm names as docs/results/study2, seed 0), with the recipe's overrides."""
    import shutil

    import pdl_plugin.study.runner as runner

    command = _readme_screen_command()
    assert command[0] == "pdl-compare"
    prior = tmp_path / "outputs" / "model_prior.safetensors"  # pdl-freq --model-prior's output, as the README says
    prior.parent.mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "docs/results/study2/priors/dialogue/model_prior.safetensors",
                prior)
    recipe = _recipe(tmp_path)
    argv = [item.replace("my_recipe.yaml", recipe) for item in command[1:]]
    monkeypatch.chdir(tmp_path)  # outputs/, screen/ relative to where the user runs it
    planned = {}
    monkeypatch.setattr(runner, "run_study", lambda study, *args, **kwargs: planned.setdefault("study", study).report)
    compare(argv)
    study = planned["study"]
    studied = {path.name for path in (Path(__file__).resolve().parents[2] / "docs/results/study2/dialogue").iterdir()}
    assert study.arms[0].name == "alpha-0" and study.seeds == [0]
    assert {arm.name for arm in study.arms} == studied | {"alpha-0.5-exempt-min_weight-1-ce_mix-0.5"}
    assert "--max_steps" in study.overrides and study.results_dir == Path("screen/results")
