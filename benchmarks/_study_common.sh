# What study.sh (the first study) and study2.sh (the second) share, so that both train and evaluate alike:
# `study_size TASK` sets the arrays `steps` (training) and `scoring` (evaluation) of each offline task's runs;
# `run_worker I LOG_PREFIX` is one of the one-thread processes that share a plan out.
# dialogue: 308 steps of 8 rows (3.0 epochs of 817 rows), all 81 validation rows; code: 150 steps of 8 (1,200
# examples), the first 64 of 327 validation rows; summarization: 150 steps of 8, the first 64 of 3,442 rows.
# --reference_alpha: the alpha of the validation PDL every arm is scored with (the recipes' alphas of the first study).
study_size() {
    case "$1" in
        dialogue)
            steps=(--max_steps 308 --warmup_steps 10 --eval_steps 28 --checkpoint_steps 28)
            scoring=(--max_prompts 81 --max_new_tokens 64 --reference_alpha 0.5) ;;
        code)
            steps=(--max_steps 150 --warmup_steps 5 --eval_steps 25 --checkpoint_steps 25)
            scoring=(--max_eval_samples 64 --max_prompts 64 --max_new_tokens 128 --reference_alpha 0.25) ;;
        summarization)
            steps=(--max_steps 150 --warmup_steps 5 --eval_steps 25 --checkpoint_steps 25)
            scoring=(--max_eval_samples 64 --max_prompts 64 --max_new_tokens 48 --reference_alpha 0.75) ;;
        *) echo "unknown task '$1' (dialogue, code, summarization)" >&2; return 2 ;;
    esac
}

run_worker() {  # worker I: every task of `tasks` in turn (the caller's `study_command TASK` sets `pdl_compare`), each
    local worker=$1 prefix=$2 task status=0  # run that no other worker holds; a task whose runs failed (pdl-compare
    for task in "${tasks[@]}"; do            # exits 2 after the others) does not stop the next task
        study_command "$task"
        OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "${pdl_compare[@]}" > "$prefix$task-worker-$worker.log" 2>&1 || status=$?
    done
    return "$status"
}
