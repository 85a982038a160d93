"""Prior frequency tables, mixed into the task's by `pdl_prior_path` + `pdl_prior_mix`: a general text corpus counted
whole (`corpus`, kind `all_tokens`) or the base model's expected frequencies at the trained positions (`model`, kind
`model_prior`). Both write the task table's file format."""

from .corpus import TextSource, corpus_table, count_all_tokens, iter_texts
from .model import load_base_model, model_prior_counts, model_prior_table

__all__ = ["TextSource", "corpus_table", "count_all_tokens", "iter_texts", "load_base_model", "model_prior_counts",
           "model_prior_table"]
