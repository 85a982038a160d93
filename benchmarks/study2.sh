#!/usr/bin/env bash
# The second study (issue 25, plan registered in docs/results.md): which PDL setting, if any, beats cross-entropy.
# Same models, data, steps and evaluation as the first study (benchmarks/_study_common.sh); every arm trains with the
# end-of-turn exemption; results in docs/results/study2/TASK/ARM/seed-S/ (commit them: they are skipped afterwards).
#
#   bash benchmarks/study2.sh priors TASK [TASK ...]     # the base model's prior of each task (docs/results/study2/priors)
#   bash benchmarks/study2.sh stage1 TASK [TASK ...]     # seed 0: CE (re-run or reused, below) and the stage-1 arms
#   bash benchmarks/study2.sh stage2 TASK [TASK ...]     # seeds 1, 2 of the two first arms of stage 1's order
#   bash benchmarks/study2.sh third TASK [TASK ...]      # seeds 1, 2 of the arms stage 2 takes on both other tasks
#   bash benchmarks/study2.sh reproduce TASK [--seeds S] # CE seed 0 (or S, e.g. 1,2) again, into .../reproduction
#   bash benchmarks/study2.sh report TASK [TASK ...]     # redraw docs/results/study2/TASK.md from committed results
#   options: --workers N (default 2; one thread each); --seeds S (reproduce only; default 0)
# A reproduced CE run lends its end-of-reply figures to the committed run that predates them:
#   python benchmarks/reproduce_check.py docs/results/study2/TASK/alpha-0/seed-S \
#       docs/results/study2/reproduction/TASK/alpha-0/seed-S --keep_end_of_reply
#
# Run it from a clone pinned at one commit (git clone -q REPO study2 && cd study2 && git checkout COMMIT && bash
# scripts/setup.sh), never from a working tree being edited: bash reads a script while it runs.
# The CE arm: dialogue and code reuse the first study's committed CE runs (their data come from wheels and do not
# change; `reproduce` checks that a re-run gives the same numbers). Summarization's data are built from the machine's
# apt index, which Debian updates: its runs read a snapshot of 2026-12-07 (pin_summarization_data) and its CE arm is
# re-run beside the arms on the same data (pdl-compare refuses to pair runs whose training tables differ).
# An arm whose prior table is not there yet is left out with a message; run `priors` first (or again later: the
# plan's other runs are skipped once finished, so a later call adds the missing arm).
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/_study_common.sh

usage="usage: bash benchmarks/study2.sh priors|stage1|stage2|third|reproduce|report TASK [TASK ...] [--workers N] [--seeds S]"
mode=${1:-} tasks=() workers=2 reproduce_seeds=0
shift || true
while [[ $# -gt 0 ]]; do
    case "$1" in
        dialogue|code|summarization) tasks+=("$1") ;;
        --workers) workers=$2; shift ;;
        --seeds) reproduce_seeds=$2; shift ;;
        *) echo "unknown argument '$1'; $usage" >&2; exit 2 ;;
    esac
    shift
done
[[ ${#tasks[@]} -gt 0 ]] || { echo "$usage" >&2; exit 2; }
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
results=docs/results/study2

pin_summarization_data() {  # summarization's data from apt's Translation-en indexes as of 2026-12-07: the live index
    # moves whenever Debian publishes an update, and with it every batch. The small files that move (security,
    # updates) are committed in $snapshot; the large bookworm file is fetched and must keep its SHA-1. The first
    # session's runs (081c7ee) read these same files: their training labels hash to the same data_fingerprint.
    # Every run then reads its data through its own cache (PDL_PLUGIN_CACHE), never the user's.
    local snapshot=$PWD/$results/data/summarization-apt-2026-12-07 cache=$PWD/outputs/study2/cache
    export PDL_PLUGIN_CACHE=$cache
    if [[ ! -d $cache/apt-lists ]]; then
        local fresh=$PWD/outputs/study2/fresh-apt pinned=$cache/apt-lists.partial
        rm -rf "$fresh" "$pinned" && mkdir -p "$pinned"
        PDL_PLUGIN_CACHE=$fresh .venv/bin/python -c \
            'from pdl_plugin.data.summarization import fetch_translations; fetch_translations()'
        cp "$fresh"/apt-lists/*_debian_dists_bookworm_main_i18n_Translation-en.lz4 "$snapshot"/*.lz4 "$pinned"/
        mv "$pinned" "$cache/apt-lists" && rm -rf "$fresh"
    fi
    (cd "$cache/apt-lists" && sha1sum --quiet -c "$snapshot/SHA1SUMS") || {
        echo "summarization: the pinned apt index of 2026-12-07 cannot be rebuilt here (a file's SHA-1 differs, above;" \
             "the bookworm file moves only at a point release). Its runs would train on other rows than the" \
             "committed ones: re-run all of that task's arms (CE included) on one index, and say so in docs/results.md." >&2
        exit 2
    }
}

# Every arm inherits the recipe's other settings, and every run the engine, data and evaluation code, so runs refuse
# unless these are those of the study's first runs (e1f9140): the offline recipes, the shared run sizes, and
# pdl_plugin but for the study package itself (plan, report) and the Axolotl integration, which no study run uses.
# Item 7 of issue 25 edits the recipes; a fix to the engine mid-study needs a new reproduction before this moves.
STUDY_COMMIT=e1f9140
STUDY_PATHS=(recipes/offline benchmarks/_study_common.sh pdl_plugin ':!pdl_plugin/study' ':!pdl_plugin/integrations')
check_study_code() {
    git diff --quiet "$STUDY_COMMIT" -- "${STUDY_PATHS[@]}" || {
        echo "the recipes, run sizes or training code differ from the study's commit $STUDY_COMMIT" \
             "(git diff --stat $STUDY_COMMIT -- ${STUDY_PATHS[*]}): run the study from a clone that trains as its" \
             "first runs did" >&2
        exit 2
    }
}

prior_of() { echo "$results/priors/$1/model_prior.safetensors"; }

make_prior() {  # the base model's expected count of each token at the trained positions (docs/priors.md); on
    local task=$1 shard=()  # summarization 1 of 26 contiguous shards (1,197 prepared rows, ~12 min on one thread;
    [[ $task == summarization ]] && shard=(--shard 1/26)  # the whole set would take ~6 hours on this CPU)
    mkdir -p "$(dirname "$(prior_of "$task")")"
    [[ -f $(prior_of "$task") ]] && { echo "$(prior_of "$task"): there"; return; }
    OMP_NUM_THREADS=$workers .venv/bin/pdl-freq --config "recipes/offline/${task}_lora.yaml" --model-prior \
        ${shard[@]+"${shard[@]}"} --output "$(prior_of "$task")"
}

stage1_arms() {  # the arms of stage 1 registered in docs/results.md, in the array `arms`
    local task=$1
    arms=(--arm alpha=0.25,exempt=true --arm alpha=0.5,exempt=true,min_weight=1
          --arm alpha=0.5,exempt=true,ce_mix=0.5)
    if [[ -f $(prior_of "$task") ]]; then
        arms+=(--arm "alpha=0.5,exempt=true,prior_path=$(prior_of "$task"),prior_mix=0.5")
    else
        echo "$task: no prior table yet ($(prior_of "$task")), the prior arm is left out: run 'priors $task'" >&2
    fi
    arms+=(--arm alpha=0.5,exempt=true,min_weight=1,ce_mix=0.5)  # A5, chosen from A1-A4 (docs/results.md says why)
}

stage2_arms() {  # the arms of stage 2 in `arms`: the two first of stage 1's order among the stage-1 arms, from the
    local task=$1 specs spec  # committed seed-0 results (benchmarks/stage2_arms.py); fails while stage 1 is unfinished;
    shift                     # further arguments go to stage2_arms.py (`--third OTHER_TASK_DIR ...`)
    [[ -f $(prior_of "$task") ]] || { echo "$task: no prior table ($(prior_of "$task")): finish stage 1 first" >&2; return 2; }
    stage1_arms "$task"
    specs=$(.venv/bin/python benchmarks/stage2_arms.py "$results/$task" "${arms[@]}" "$@") || return 2
    arms=()
    while read -r spec; do [[ -n $spec ]] && arms+=(--arm "$spec"); done <<< "$specs"
}

third_arms() {  # the arms that stage 2 takes on both other tasks and not on this one, in `arms`: they get seeds 1
    local task=$1 others=() other  # and 2 here too, so that the default is chosen among arms judged on every task
    for other in dialogue summarization code; do [[ $other == "$task" ]] || others+=("$results/$other"); done
    stage2_arms "$task" --third "${others[@]}"  # (docs/results.md, "How that rule is applied", before stage 2)
}

reuse_ce() {  # dialogue and code: the first study's CE runs are the baseline (seed 0 checked by `reproduce`)
    local task=$1 seed
    [[ $task == summarization ]] && return
    for seed in 0 1 2; do
        local from=docs/results/study/$task/alpha-0/seed-$seed to=$results/$task/alpha-0/seed-$seed
        [[ -d $to ]] && continue
        mkdir -p "$to"
        cp "$from"/train.json "$from"/results.json "$to"/
        if [[ -f $from/end_of_reply.json ]]; then cp "$from"/end_of_reply.json "$to"/; fi  # measured afterwards
    done
}

study_command() {  # the pdl-compare command of one task and mode, in the array `pdl_compare`
    local task=$1 steps scoring arms=() out=$results seeds=0
    study_size "$task"
    [[ $mode == stage1 || $mode == report ]] && stage1_arms "$task"
    [[ $mode == stage2 ]] && { stage2_arms "$task"; seeds=1,2; }
    [[ $mode == third ]] && { third_arms "$task"; seeds=1,2; }
    [[ $mode == reproduce ]] && { out=$results/reproduction; seeds=$reproduce_seeds; }
    pdl_compare=(.venv/bin/pdl-compare --config "recipes/offline/${task}_lora.yaml" --outdir "outputs/study2/$mode"
                 --results_dir "$out" --report "$out/$task.md" --alphas 0 --seeds "$seeds" --eval_strategy steps
                 --logging_steps 4 "${steps[@]}" "${scoring[@]}" ${arms[@]+"${arms[@]}"})
}

[[ " ${tasks[*]} " == *" summarization "* && $mode != report ]] && pin_summarization_data
[[ $mode == report ]] || check_study_code
case "$mode" in
    priors) for task in "${tasks[@]}"; do make_prior "$task"; done; exit ;;
    report)
        status=0
        for task in "${tasks[@]}"; do study_command "$task"; "${pdl_compare[@]}" --report_only || status=$?; done
        exit "$status" ;;
    stage1) for task in "${tasks[@]}"; do reuse_ce "$task"; done ;;
    stage2)  # CE's seeds 1 and 2: reused for dialogue and code, run beside the arms for summarization
        for task in "${tasks[@]}"; do
            reuse_ce "$task"
            stage2_arms "$task" || exit 2
            echo "$task, stage 2 (seeds 1, 2): ${arms[*]}"
        done ;;
    third)  # as stage 2, with the arms of the other tasks' stage 2 that this task's lacks
        for task in "${tasks[@]}"; do
            reuse_ce "$task"
            third_arms "$task" || exit 2
            echo "$task, seeds 1, 2 of the arms stage 2 judges on both other tasks: ${arms[*]:-none}"
        done ;;
    reproduce) ;;
    *) echo "$usage" >&2; exit 2 ;;
esac
mkdir -p outputs/study2
pids=()
for ((worker = 1; worker <= workers; worker++)); do
    run_worker "$worker" "outputs/study2/$mode-" & pids+=($!)
    sleep 5
done
echo "$workers worker(s) running (${tasks[*]}, $mode); logs: outputs/study2/$mode-TASK-worker-N.log"
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
