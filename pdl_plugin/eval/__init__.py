"""Evaluation of PDL finetunes: pure metrics, batched generation, `pdl-eval` and `pdl-compare` orchestration."""
