"""Evaluation of PDL finetunes: pure metrics, batched generation, validation losses and `pdl-eval` (the study that
trains and compares runs, `pdl-compare`, is `pdl_plugin.study`)."""
