# The size of each offline task's study runs, shared by study.sh (the first study) and study2.sh (the second), so that
# both train and evaluate alike: `study_size TASK` sets the arrays `steps` (training) and `scoring` (evaluation).
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
