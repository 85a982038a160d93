"""PDLSFTTrainer against independent computations: direct formulas on full logits, TRL's own nll, big-batch
gradients, and token counts made without TRL's preparation."""

import copy
from collections import Counter

import pytest
import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from conftest import CONVERSATIONS, PROMPT_COMPLETION, cpu_args, make_tiny_model
from pdl_plugin import FrequencyTable, FrequencyTableError, PDLConfigError, PDLSFTTrainer
from pdl_plugin.frequency import TABLE_FILENAME


def _independent_weights(counts: Counter, vocab: int, alpha: float, eps: float) -> torch.Tensor:
    """Equation (3) on normalised counts; a token never counted gets the rarest counted token's weight (the default
    `pdl_unseen_weight: rarest`)."""
    total = sum(counts.values())
    rarest = min(counts.values()) / total
    return torch.tensor([(counts[i] / total if counts.get(i) else rarest) + eps for i in range(vocab)],
                        dtype=torch.float64) ** -alpha


def _prompt_completion_counts(tokenizer) -> Counter:
    """Trained tokens = what prompt+completion+eos adds after the tokenized prompt."""
    counts = Counter()
    for prompt, completion in zip(PROMPT_COMPLETION["prompt"], PROMPT_COMPLETION["completion"]):
        prompt_ids = tokenizer(prompt)["input_ids"]
        full_ids = tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
        assert full_ids[: len(prompt_ids)] == prompt_ids
        counts.update(full_ids[len(prompt_ids):])
    return counts


def _direct_pdl(model, batch, weights: torch.Tensor):
    """sum w * nll / sum w from the full logits, in float64."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    log_probs = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    w = weights[labels.clamp(min=0)] * mask
    nll = -log_probs * mask
    return (w * nll).sum() / w.sum(), nll.sum() / mask.sum(), w.sum() / mask.sum()


@pytest.fixture
def prompt_completion():
    return Dataset.from_dict(PROMPT_COMPLETION)


def test_counts_of_prompt_completion_data_are_the_completion_tokens(tmp_path, tokenizer, tiny_model, prompt_completion):
    trainer = PDLSFTTrainer(tiny_model, cpu_args(tmp_path, loss_type="pdl"), prompt_completion,
                            processing_class=tokenizer)
    expected = _prompt_completion_counts(tokenizer)
    got = {i: c for i, c in enumerate(trainer.pdl_table.counts.tolist()) if c}
    assert got == dict(expected)
    assert trainer.pdl_table.masking == "completion_only"
    assert trainer.pdl_weights.dtype == torch.float32
    assert trainer.pdl_weights.shape == (tiny_model.get_output_embeddings().weight.shape[0],)


def test_counts_of_conversations_are_the_assistant_tokens_with_end_of_turn(tmp_path, tokenizer, tiny_model):
    dataset = Dataset.from_dict({"messages": CONVERSATIONS})
    trainer = PDLSFTTrainer(tiny_model, cpu_args(tmp_path, loss_type="pdl", assistant_only_loss=True), dataset,
                            processing_class=tokenizer)
    expected = Counter()
    for conversation in CONVERSATIONS:
        for message in conversation:
            if message["role"] == "assistant":
                expected.update(tokenizer(message["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"])
    got = {i: c for i, c in enumerate(trainer.pdl_table.counts.tolist()) if c}
    assert got == dict(expected)
    assert trainer.pdl_table.masking == "assistant_only"
    assert got[tokenizer.convert_tokens_to_ids("<|im_end|>")] == 4  # one per assistant turn


@pytest.mark.parametrize("head", ["pdl", "trl"])
def test_loss_of_one_batch_is_the_weighted_mean_of_a_direct_formula(
    tmp_path, tokenizer, tiny_model, prompt_completion, monkeypatch, head
):
    """Both loss paths: our head on trained positions, and TRL's fused head (used for models ours does not serve)."""
    if head == "trl":
        monkeypatch.setattr("pdl_plugin.hf_trainer.pdl_head_unsupported", lambda model: "a test forces TRL's head")
    alpha, eps = 0.7, 1e-6
    args = cpu_args(tmp_path, loss_type="pdl", pdl_alpha=alpha, pdl_epsilon=eps)
    trainer = PDLSFTTrainer(tiny_model, args, prompt_completion, processing_class=tokenizer)
    assert trainer._pdl_head == (head == "pdl")
    batch = next(iter(trainer.get_train_dataloader()))
    weights = _independent_weights(_prompt_completion_counts(tokenizer), len(tokenizer), alpha, eps)
    torch.testing.assert_close(trainer.pdl_weights.double(), weights, rtol=1e-6, atol=0)

    loss = trainer.compute_loss(trainer.model, dict(batch))
    expected, _, _ = _direct_pdl(tiny_model, batch, weights)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)


def test_exempt_special_tokens_train_eos_with_the_mean_weight(tmp_path, tokenizer, tiny_model, prompt_completion):
    """`pdl_exempt_special_tokens`: the special tokens (here eos, `<|im_end|>`, trained once per row) weigh the
    count-weighted mean of equation (3)'s weights; every other token keeps equation (3); the loss follows."""
    alpha, eps = 0.7, 1e-6
    args = cpu_args(tmp_path, loss_type="pdl", pdl_alpha=alpha, pdl_epsilon=eps, pdl_exempt_special_tokens=True)
    trainer = PDLSFTTrainer(tiny_model, args, prompt_completion, processing_class=tokenizer)
    counts = _prompt_completion_counts(tokenizer)
    plain = _independent_weights(counts, len(tokenizer), alpha, eps)
    mean = sum(plain[i] * c for i, c in counts.items()) / sum(counts.values())
    expected = plain.clone()
    expected[tokenizer.all_special_ids] = mean
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_id == eos and counts[eos] == len(PROMPT_COMPLETION["prompt"])  # trained once per row
    assert float(plain[eos]) < 0.9 * float(mean)  # the most frequent kind of token: equation (3) weighs it down
    torch.testing.assert_close(trainer.pdl_weights.double(), expected, rtol=1e-6, atol=0)
    batch = next(iter(trainer.get_train_dataloader()))
    loss = trainer.compute_loss(trainer.model, dict(batch))
    torch.testing.assert_close(loss.double(), _direct_pdl(tiny_model, batch, expected)[0], rtol=1e-5, atol=0)


def test_token_normalisation_divides_by_the_token_count(tmp_path, tokenizer, tiny_model, prompt_completion):
    args = cpu_args(tmp_path, loss_type="pdl", pdl_alpha=1.0, pdl_normalize="token")
    trainer = PDLSFTTrainer(tiny_model, args, prompt_completion, processing_class=tokenizer)
    counts = trainer.pdl_table.counts.double()
    assert abs(float((trainer.pdl_weights.double() * counts).sum() / counts.sum()) - 1.0) < 1e-6
    batch = next(iter(trainer.get_train_dataloader()))
    loss = trainer.compute_loss(trainer.model, dict(batch))
    labels = batch["labels"][:, 1:]
    with torch.no_grad():
        logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, reduction="none")
    w = trainer.pdl_weights.double()[labels.clamp(min=0)] * (labels != -100)
    torch.testing.assert_close(loss.double(), (w * nll).sum() / (labels != -100).sum(), rtol=1e-5, atol=0)


def test_alpha_zero_equals_trl_nll_in_loss_and_gradient(tmp_path, tokenizer, prompt_completion):
    model_a, model_b = make_tiny_model(len(tokenizer)), make_tiny_model(len(tokenizer))
    pdl = PDLSFTTrainer(model_a, cpu_args(tmp_path, loss_type="pdl", pdl_alpha=0.0), prompt_completion,
                        processing_class=tokenizer)
    nll = SFTTrainer(model_b, cpu_args(tmp_path, config_cls=SFTConfig, loss_type="nll"),
                     train_dataset=prompt_completion, processing_class=copy.deepcopy(tokenizer))
    batch = next(iter(pdl.get_train_dataloader()))
    token_count = (batch["labels"][:, 1:] != -100).sum()
    pdl_denominator = pdl._get_num_items_in_batch([batch], torch.device("cpu"))
    assert float(pdl_denominator) == float(token_count)
    for num_items in ({pdl: None, nll: None}, {pdl: pdl_denominator, nll: token_count}):
        losses = {}
        for trainer in (pdl, nll):
            trainer.model.zero_grad()
            losses[trainer] = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=num_items[trainer])
            losses[trainer].backward()
        torch.testing.assert_close(losses[pdl], losses[nll], rtol=1e-6, atol=1e-7)
        for (name, p), (_, q) in zip(pdl.model.named_parameters(), nll.model.named_parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-8, msg=name)


def _one_sgd_step(tmp_path, tokenizer, dataset, batch_size, accumulation):
    model = make_tiny_model(len(tokenizer), seed=3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = cpu_args(
        tmp_path / f"b{batch_size}", loss_type="pdl", pdl_alpha=1.0, optim="sgd", learning_rate=1.0,
        lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0, max_steps=1,
        per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
    )
    trainer = PDLSFTTrainer(model, args, dataset, processing_class=tokenizer)
    rows = trainer.train_dataset.select_columns(["input_ids", "labels"])
    whole_step = trainer.data_collator([rows[i] for i in range(len(rows))])
    direct = _direct_pdl(model, whole_step, trainer.pdl_weights.double())  # before the step changes the model
    trainer.train()
    delta = torch.cat([(p.detach() - before[n]).flatten() for n, p in model.named_parameters()])
    return delta, trainer, direct


def test_gradient_accumulation_4x1_equals_one_batch_of_4(tmp_path, tokenizer, prompt_completion):
    delta_ga, ga_trainer, (pdl, ce, mean_weight) = _one_sgd_step(tmp_path, tokenizer, prompt_completion, 1, 4)
    delta_big, big_trainer, _ = _one_sgd_step(tmp_path, tokenizer, prompt_completion, 4, 1)
    relative_error = float((delta_ga - delta_big).norm() / delta_big.norm())
    assert relative_error <= 1e-5, relative_error

    # Logged besides the loss: plain cross-entropy and mean weight of the same tokens, against the direct formula
    for trainer in (ga_trainer, big_trainer):
        logged = trainer.state.log_history[0]
        assert logged["loss"] == pytest.approx(float(pdl), rel=1e-5)
        assert logged["ce_loss"] == pytest.approx(float(ce), rel=1e-5)
        assert logged["pdl_mean_weight"] == pytest.approx(float(mean_weight), rel=1e-5)


def test_naive_per_micro_batch_mean_would_differ(tmp_path, tokenizer, prompt_completion):
    """Guards the test above: with these examples, averaging micro-batch means is measurably wrong."""
    trainer = PDLSFTTrainer(make_tiny_model(len(tokenizer)), cpu_args(tmp_path, loss_type="pdl", pdl_alpha=1.0,
                            per_device_train_batch_size=1), prompt_completion, processing_class=tokenizer)
    batches = list(trainer.get_train_dataloader())
    total = trainer._get_num_items_in_batch(batches, torch.device("cpu"))
    with torch.no_grad():
        naive = sum(trainer.compute_loss(trainer.model, dict(b)) for b in batches) / len(batches)
        exact = sum(trainer.compute_loss(trainer.model, dict(b), num_items_in_batch=total) for b in batches)
    assert abs(float(naive - exact)) > 1e-3


def test_table_and_settings_are_saved_and_can_be_reused(tmp_path, tokenizer, prompt_completion):
    first = PDLSFTTrainer(make_tiny_model(len(tokenizer)), cpu_args(tmp_path, loss_type="pdl"), prompt_completion,
                          processing_class=tokenizer)
    saved = tmp_path / "out" / TABLE_FILENAME
    assert not saved.exists()  # nothing is written before every check has passed
    first.train()
    assert not saved.exists()  # the run's files arrive together, with its final save (never beside another's model)
    first.save_model()
    assert saved.is_file() and (tmp_path / "out" / "pdl_config.json").is_file()
    other_data = Dataset.from_dict({"prompt": ["x"], "completion": [" y"]})
    reused = PDLSFTTrainer(make_tiny_model(len(tokenizer)),
                           cpu_args(tmp_path / "again", loss_type="pdl", pdl_freq_path=str(saved)), other_data,
                           processing_class=tokenizer)
    assert torch.equal(reused.pdl_table.counts, first.pdl_table.counts)
    assert torch.equal(reused.pdl_weights, first.pdl_weights)
    reused.train()
    reused.save_model()
    assert FrequencyTable.load(tmp_path / "again" / "out").total == first.pdl_table.total


def test_table_of_another_tokenizer_or_size_is_refused(tmp_path, tokenizer, prompt_completion):
    vocab = len(tokenizer)
    for counts, fingerprint, message in [
        (torch.ones(vocab, dtype=torch.int64), "0123456789abcdef", "another tokenizer"),
        (torch.ones(vocab + 7, dtype=torch.int64), None, "entries but the model's output embedding"),
    ]:
        from pdl_plugin import tokenizer_fingerprint

        table = FrequencyTable(counts, fingerprint or tokenizer_fingerprint(tokenizer), "completion_only", "d")
        path = table.save(tmp_path / f"{message[:7]}.safetensors")
        with pytest.raises(FrequencyTableError, match=message):
            PDLSFTTrainer(make_tiny_model(vocab), cpu_args(tmp_path, loss_type="pdl", pdl_freq_path=str(path)),
                          prompt_completion, processing_class=tokenizer)


def test_missing_table_is_refused_before_training(tmp_path, tokenizer, tiny_model, prompt_completion):
    with pytest.raises(FrequencyTableError, match="No frequency table"):
        PDLSFTTrainer(tiny_model, cpu_args(tmp_path, loss_type="pdl", pdl_freq_path=str(tmp_path / "none")),
                      prompt_completion, processing_class=tokenizer)


def test_dataset_with_no_trained_token_is_refused(tmp_path, tokenizer, tiny_model):
    ids = tokenizer("Nothing here is trained.")["input_ids"]
    dataset = Dataset.from_dict({"input_ids": [ids, ids], "labels": [[-100] * len(ids)] * 2})
    with pytest.raises(PDLConfigError, match="counts no trained token"):
        PDLSFTTrainer(tiny_model, cpu_args(tmp_path, loss_type="pdl", max_length=None), dataset,
                      processing_class=tokenizer)


def test_chat_template_without_assistant_markers_is_refused(tmp_path, tokenizer, tiny_model):
    tokenizer.chat_template = (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    dataset = Dataset.from_dict({"messages": CONVERSATIONS})
    with pytest.raises(PDLConfigError, match=r"needs a chat template that marks the assistant tokens.*generation"):
        PDLSFTTrainer(tiny_model, cpu_args(tmp_path, loss_type="pdl", assistant_only_loss=True), dataset,
                      processing_class=tokenizer)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"pdl_alpha": -1.0}, "pdl_alpha"), ({"pdl_epsilon": 0.0}, "pdl_epsilon"), ({"pdl_alpha": "strong"}, "number"),
     ({"loss_type": "focal"}, "loss_type"), ({"pdl_normalize": "mean"}, "pdl_normalize"),
     ({"pdl_max_weight": -2.0}, "pdl_max_weight"), ({"label_smoothing_factor": 0.1}, "label_smoothing")],
)
def test_bad_settings_are_refused_by_the_config(tmp_path, overrides, message):
    with pytest.raises(PDLConfigError, match=message):
        cpu_args(tmp_path, **{"loss_type": "pdl", **overrides})


def test_numeric_strings_from_yaml_are_accepted(tmp_path):
    args = cpu_args(tmp_path, loss_type="pdl", pdl_alpha="0.25", pdl_epsilon="1e-7")
    assert (args.pdl_alpha, args.pdl_epsilon) == (0.25, 1e-7)


def test_compute_loss_func_with_pdl_is_refused(tmp_path, tokenizer, tiny_model, prompt_completion):
    with pytest.raises(PDLConfigError, match="compute_loss_func"):
        PDLSFTTrainer(tiny_model, cpu_args(tmp_path, loss_type="pdl"), prompt_completion, processing_class=tokenizer,
                      compute_loss_func=lambda *a, **k: 0)


@pytest.mark.parametrize(
    ("columns", "message"),
    [({"prompt": ["a"], "answer": ["b"]}, r"has a `prompt` column but no `completion` column"),
     ({"document": ["a"], "summary": ["b"]}, r"columns \['document', 'summary'\] fit no format.*`messages`")],
)
def test_dataset_without_the_columns_its_task_needs_is_refused(tmp_path, tokenizer, tiny_model, columns, message):
    with pytest.raises(PDLConfigError, match=message):
        PDLSFTTrainer(tiny_model, cpu_args(tmp_path, loss_type="pdl"), Dataset.from_dict(columns),
                      processing_class=tokenizer)


def test_alpha_warmup_starts_as_cross_entropy_and_reaches_alpha(tmp_path, tokenizer, tiny_model, prompt_completion):
    args = cpu_args(tmp_path, loss_type="pdl", pdl_alpha=1.0, pdl_alpha_warmup_steps=2, max_steps=3,
                    per_device_train_batch_size=4)
    trainer = PDLSFTTrainer(tiny_model, args, prompt_completion, processing_class=tokenizer)
    assert [trainer.pdl_engine.alpha_at(step) for step in (0, 1, 2, 5)] == [0.0, 0.5, 1.0, 1.0]
    trainer.train()
    first, second, third = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [first["pdl_alpha"], second["pdl_alpha"], third["pdl_alpha"]] == [0.0, 0.5, 1.0]
    assert first["loss"] == pytest.approx(first["ce_loss"], rel=1e-6)  # alpha 0: the weighted mean is the plain mean
    assert first["pdl_mean_weight"] == pytest.approx(1.0)
    assert third["pdl_mean_weight"] > 2.0  # eq. (3) weights at alpha 1, no longer all ones


def test_bad_alpha_warmup_is_refused(tmp_path):
    with pytest.raises(PDLConfigError, match="pdl_alpha_warmup_steps"):
        cpu_args(tmp_path, loss_type="pdl", pdl_alpha_warmup_steps=-1)


def test_pdl_head_declines_models_whose_logits_it_would_get_wrong(tiny_model):
    from pdl_plugin.fused_head import pdl_head_unsupported

    assert pdl_head_unsupported(tiny_model) is None
    tiny_model.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping" in pdl_head_unsupported(tiny_model)



def test_installing_the_head_twice_keeps_one_head(tokenizer):
    """A trained model handed to a second trainer (as pdl-eval does) must not stack forward wrappers."""
    from pdl_plugin.fused_head import add_pdl_head

    model = make_tiny_model(len(tokenizer))
    add_pdl_head(model)
    patched = model.forward.__func__
    add_pdl_head(model)
    assert model.forward.__func__ is patched
    ids = torch.tensor([[1, 2, 3, 4]])
    out = model(input_ids=ids, labels=torch.tensor([[-100, 5, -100, 7]]), pdl_head=True)
    assert out.targets.tolist() == [5, 7]
