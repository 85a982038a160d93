"""`model(**inputs, pdl_head=True)`: the backbone, then the LM head and cross-entropy on the trained positions only.

Installed on top of TRL's fused LM head (which it leaves in place for `fused_lm_head=True` and for generation), in
the same way: the forward is patched on the model, so DDP, FSDP and PEFT wrappers call it through their own forward.
TRL scores every position on CPU; this scores only the positions whose label is not -100, with
`pdl_plugin.ops.linear_cross_entropy`, never holding the full logits.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass

import torch
from torch.distributed.tensor import DTensor, Partial
from transformers.utils import ModelOutput

from .loss import IGNORE_INDEX
from .ops import linear_cross_entropy

_LOGIT_SCALING_FIELDS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                         "logits_scaling")


@dataclass
class PDLHeadOutput(ModelOutput):
    """Per trained token (flattened, in order): log-prob of the target, the target, entropy and top-1 hit."""

    log_probs: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    is_top1: torch.Tensor | None = None
    label_mask: torch.Tensor | None = None  # (batch, positions): which shifted labels are trained


def pdl_head_unsupported(model) -> str | None:
    """Why the PDL head cannot serve this model (then TRL's fused head does), or None."""
    config = model.config.get_text_config()
    for name in _LOGIT_SCALING_FIELDS:
        if getattr(config, name, None) not in (None, 1, 1.0):
            return f"its logits are scaled or soft-capped ({name})"
    if getattr(model.get_output_embeddings(), "bias", None) is not None:
        return "its LM head has a bias"
    if getattr(config, "output_router_logits", False):
        return "it is a mixture of experts with a router loss"
    return None


def full_output_weight(model) -> torch.Tensor:
    """The output embedding's weight, whole. FSDP2 leaves a parameter a sharded DTensor outside its unit's forward,
    and the LM head's own forward is never called here: gather it, as TRL's fused head does. Each rank's gradient of
    the gathered weight is a partial one (its own data), so it is averaged back onto the shards, as FSDP2 averages
    the gradients it reduces itself; the default (replicated) gradient would keep only the rank's own share."""
    weight = model.get_output_embeddings().weight
    if not isinstance(weight, DTensor):
        return weight
    return weight.full_tensor(grad_placements=[Partial("avg")] * weight.device_mesh.ndim)


def add_pdl_head(model) -> None:
    """Patch `model.forward` so that `pdl_head=True` returns a `PDLHeadOutput`; other calls are unchanged.

    Idempotent: a model that already has the head (e.g. a trained model handed to a second trainer) keeps one.
    The labels come as `labels` or, where the host's Trainer pops them before the forward (Axolotl's
    `compute_loss_func` path), as `pdl_labels`.
    """
    if getattr(model, "_pdl_head_installed", False):  # a wrapper patched on top since (TRL's) passes our flag through
        return
    previous_forward = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, pdl_head: bool = False, **kwargs):
        if not pdl_head:
            return previous_forward(*args, **kwargs)
        labels, shift_labels = kwargs.pop("labels", None), kwargs.pop("shift_labels", None)
        if kwargs.get("pdl_labels") is not None:
            labels = kwargs.pop("pdl_labels")
        kwargs.pop("pdl_labels", None)
        kwargs.pop("num_items_in_batch", None)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        weight = full_output_weight(self)
        hidden, labels = hidden.to(weight.device), labels.to(weight.device)
        mask = labels != IGNORE_INDEX
        targets = labels[mask]
        nll, entropy, is_top1 = linear_cross_entropy(hidden[mask], weight, targets)
        return PDLHeadOutput(log_probs=-nll, targets=targets, entropy=entropy, is_top1=is_top1, label_mask=mask)

    model.forward = types.MethodType(forward, model)
    model._pdl_head_installed = True
