#!/usr/bin/env bash
# The PDL study on the three offline tasks (issue 11): arms alpha 0 (CE), 0.25, 0.5, 1.0 and alpha 1.0 with a warm-up
# over the first half of the steps, seeds 0, 1, 2 (same seeds in every arm: same LoRA initialisation, same batches),
# on SmolLM2-135M-Instruct LoRA r8, two one-thread processes on a 2-core CPU.
#
#   bash benchmarks/study.sh TASK [TASK ...]           # dialogue, code, summarization; resumable, run it again to go on
#   bash benchmarks/study.sh TASK [TASK ...] --report  # only redraw docs/results/study/TASK.md from committed results
#   bash benchmarks/study.sh TASK --exempt [--report]  # the same plan with two more arms: alpha 0.5 and 1.0 trained
#                                                      # with pdl_exempt_special_tokens (end-of-turn token at the mean
#                                                      # weight); the runs already committed are skipped
#
# Two workers run the same pdl-compare command (one thread each): each holds the run it trains (a lock file beside the
# run's folder, freed when its process ends) and takes the next run nobody holds, so neither core waits while runs are
# left. With several tasks each worker goes through them in turn.
#
# Each finished run leaves train.json and results.json (no adapter) in docs/results/study/TASK/ARM/seed-S/: commit
# them; a later run of this script, on any machine, skips those runs. A run cut off mid-training resumes from its last
# checkpoint (kept every evaluation, in outputs/study, not committed) on the same machine, and starts again elsewhere.
# Sizes (see docs/results.md, "The study"): dialogue 308 steps of 8 rows (3.0 epochs of 817 rows); code and
# summarization 150 steps of 8 rows (1,200 examples). Validation CE is evaluated every 1/11 (dialogue) or 1/6 of
# the run, for the flattening check; the final evaluation scores the first --max_prompts validation rows.
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: bash benchmarks/study.sh TASK [TASK ...] [--exempt] [--report]   (TASK: dialogue, code, summarization)"
tasks=() report_only=false exempt=()
for arg in "$@"; do
    case "$arg" in
        dialogue|code|summarization) tasks+=("$arg") ;;
        --report) report_only=true ;;
        --exempt) exempt=(--exempt_alphas 0.5,1.0) ;;
        *) echo "unknown argument '$arg'; $usage" >&2; exit 2 ;;
    esac
done
[[ ${#tasks[@]} -gt 0 ]] || { echo "$usage" >&2; exit 2; }

source benchmarks/_study_common.sh

study_command() {  # the pdl-compare command of one task, in the array `pdl_compare`
    local task=$1 steps scoring warmup
    local common=(--outdir outputs/study --results_dir docs/results/study --report "docs/results/study/$task.md"
                  --alphas 0,0.25,0.5,1.0 --warmup_alpha 1.0 --seeds 0,1,2 --eval_strategy steps --logging_steps 4)
    study_size "$task"
    case "$task" in  # alpha 1's warm-up over the first half of the steps
        dialogue) warmup=(--alpha_warmup_steps 154) ;;
        *) warmup=(--alpha_warmup_steps 75) ;;
    esac
    pdl_compare=(.venv/bin/pdl-compare --config "recipes/offline/${task}_lora.yaml" "${common[@]}" "${steps[@]}"
                 "${warmup[@]}" "${scoring[@]}" ${exempt[@]+"${exempt[@]}"})
}

draw_reports() {
    local task status=0
    for task in "${tasks[@]}"; do study_command "$task"; "${pdl_compare[@]}" --report_only || status=$?; done
    return "$status"
}
if $report_only; then
    draw_reports; exit
fi

mkdir -p outputs/study
run_worker 1 outputs/study/ & sleep 5; run_worker 2 outputs/study/ &
echo "two workers running (${tasks[*]}); logs: outputs/study/TASK-worker-{1,2}.log"
status=0
wait -n || status=$?
wait -n || status=$?
draw_reports || status=$?
exit "$status"
