"""The chunked loss (gradients computed per chunk in the forward pass) against the plain
autograd loss over all trained positions' fp32 logits: same loss, same gradients, same
training, for a frozen head (LoRA), a trained tied head (full fine-tuning), soft-capping,
a head with a bias and bf16 autocast."""

import pytest
import torch
from tiny import build_model

from tunesmith.config import build_config
from tunesmith.train import loss as loss_module
from tunesmith.train.loss import ChunkedHeadLoss, TokenLoss, chunk_rows, whole_head_loss
from tunesmith.train.pack import collate, pack
from tunesmith.train.setup import prepare_model


def batch_of(tokenizer):
    from test_pack import examples

    rows = pack(examples(tokenizer, 7), max_seq_len=90)
    batch = collate(rows, tokenizer.pad_token_id)
    return batch["input_ids"], batch["position_ids"], batch["labels"]


def loss_and_grads(model, args, chunked):
    model.zero_grad()
    loss, n = TokenLoss(model, chunked=chunked)(*args)
    (loss / n).backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def tiny(tokenizer, method, softcap=None):
    model = build_model(tokenizer)
    model.config.final_logit_softcapping = softcap
    cfg = build_config({"method": {"name": method, "dropout": 0.0}})
    return prepare_model(model, cfg, torch.device("cpu")).train()


@pytest.mark.parametrize("method,softcap", [("lora", None), ("full", None), ("lora", 3.0), ("full", 3.0)])
def test_chunked_loss_and_gradients_match_the_whole_logits(tiny_tokenizer, monkeypatch, method, softcap):
    """Several chunks (7 rows each, the last one short) against one autograd graph; the tied
    head of full fine-tuning gets its gradient from both the embedding and the loss."""
    monkeypatch.setattr(loss_module, "CHUNK_BYTES", 7 * 4 * len(tiny_tokenizer))
    assert chunk_rows(len(tiny_tokenizer)) == 7
    model = tiny(tiny_tokenizer, method, softcap)
    args = batch_of(tiny_tokenizer)
    whole, whole_grads = loss_and_grads(model, args, chunked=False)
    chunked, chunked_grads = loss_and_grads(model, args, chunked=True)
    assert chunked == pytest.approx(whole, rel=1e-6)
    assert whole_grads.keys() == chunked_grads.keys() and whole_grads
    if method == "full":
        assert "model.embed_tokens.weight" in chunked_grads  # the tied head trains
    for name, grad in whole_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_a_head_with_a_bias_under_bf16_autocast():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True)
    hidden = torch.randn(23, 16, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            reference = whole_head_loss(hidden, head, targets, None)
        expected = torch.autograd.grad(reference, [hidden, head.weight, head.bias])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = ChunkedHeadLoss.apply(hidden, head.weight, head.bias, targets, None, 5, True)
        grads = torch.autograd.grad(loss, [hidden, head.weight, head.bias])
        tolerance = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loss, reference.float(), **tolerance)
        for got, want in zip(grads, expected):
            assert got.dtype == want.dtype
            torch.testing.assert_close(got, want, **tolerance)


def test_under_no_grad_only_the_loss_is_computed(tiny_tokenizer):
    model = tiny(tiny_tokenizer, "full")
    args = batch_of(tiny_tokenizer)
    with torch.no_grad():
        chunked, n = TokenLoss(model)(*args)
        whole, _ = TokenLoss(model, chunked=False)(*args)
    assert not chunked.requires_grad
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-6)


def test_a_few_training_steps_give_the_same_losses(tiny_tokenizer, monkeypatch):
    """Summation order differs, so within float tolerance, not bit for bit."""
    monkeypatch.setattr(loss_module, "CHUNK_BYTES", 16 * 4 * len(tiny_tokenizer))
    args = batch_of(tiny_tokenizer)
    curves = []
    for chunked in (False, True):
        model = tiny(tiny_tokenizer, "full")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = []
        for _ in range(5):
            optimizer.zero_grad()
            loss, n = TokenLoss(model, chunked=chunked)(*args)
            (loss / n).backward()
            optimizer.step()
            losses.append(loss.item() / n.item())
        curves.append(losses)
    assert curves[1] == pytest.approx(curves[0], rel=1e-5)
    assert curves[0][-1] < curves[0][0] - 0.1  # it did train
