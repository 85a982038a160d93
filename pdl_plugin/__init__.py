"""pdl-plugin: the Power-Law Decay Loss for LLM finetuning with TRL and Axolotl."""

from .config import PDLSFTConfig
from .errors import FrequencyTableError, PDLConfigError, PDLError
from .frequency import FrequencyTable, count_trained_tokens, tokenizer_fingerprint
from .trainer import PDLSFTTrainer
from .weights import pdl_weights, token_weights_from_counts

__version__ = "0.1.0"

__all__ = [
    "FrequencyTable",
    "FrequencyTableError",
    "PDLConfigError",
    "PDLError",
    "PDLSFTConfig",
    "PDLSFTTrainer",
    "count_trained_tokens",
    "pdl_weights",
    "token_weights_from_counts",
    "tokenizer_fingerprint",
]
