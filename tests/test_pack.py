import torch
import torch.nn.functional as F
from tiny import build_model

from tunesmith.models.encode import Encoded, encode
from tunesmith.train.loss import TokenLoss
from tunesmith.train.pack import collate, one_per_row, pack


def examples(tokenizer, n=5):
    out = []
    for i in range(n):
        messages = [
            {"role": "user", "content": "Extract the order as JSON." + " please" * i},
            {"role": "assistant", "content": '{"name": "Maria Lopez", "quantity": %d}' % i},
        ]
        out.append(encode(tokenizer, messages))
    return out


def test_first_fit_respects_the_limit_and_restarts_positions():
    ex = [Encoded(list(range(n)), [False] + [True] * (n - 1)) for n in (6, 5, 3, 4, 2)]
    rows = pack(ex, max_seq_len=8)
    assert all(len(r) <= 8 for r in rows)
    assert sorted(len(r) for r in rows) == [4, 8, 8]  # 6+2, 5+3, 4: first fit fills earlier rows
    assert rows[0].position_ids == [0, 1, 2, 3, 4, 5, 0, 1]
    assert sum(len(r) for r in rows) == 20


def per_token_losses(model, batch):
    # use_cache=False as in training: transformers detects packing only without a cache
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits.float()
    loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=-100, reduction="none")
    return loss


def test_packed_loss_equals_unpacked_loss_per_example(tiny_tokenizer):
    """Guards against attention leaking between packed examples (no block-diagonal mask)."""
    model = build_model(tiny_tokenizer).eval()
    ex = examples(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    alone = []
    for e in ex:
        batch = collate(one_per_row([e]), pad)
        alone.append(per_token_losses(model, batch).sum().item())
    rows = pack(ex, max_seq_len=sum(len(e.input_ids) for e in ex))
    assert len(rows) == 1
    batch = collate(rows, pad)
    losses = per_token_losses(model, batch)[0]
    starts = [0]
    for e in ex:
        starts.append(starts[-1] + len(e.input_ids))
    for i, expected in enumerate(alone):
        # the loss at position t predicts token t+1: example i's targets are starts[i]..starts[i+1]-2
        packed = losses[starts[i] : starts[i + 1] - 1].sum().item()
        assert abs(packed - expected) < 1e-5, (i, packed, expected)
    # and no example's loss depends on what it was packed with
    total, n = TokenLoss(model)(batch["input_ids"], batch["position_ids"], batch["labels"])
    assert abs(total.item() - sum(alone)) < 1e-4
    assert n.item() == sum(e.n_trained for e in ex)


def test_padding_changes_nothing(tiny_tokenizer):
    model = build_model(tiny_tokenizer).eval()
    ex = examples(tiny_tokenizer, 3)
    pad = tiny_tokenizer.pad_token_id
    padded = collate(one_per_row(ex), pad)  # rows of different lengths, right-padded
    loss_fn = TokenLoss(model)
    together, _ = loss_fn(padded["input_ids"], padded["position_ids"], padded["labels"])
    apart = sum(loss_fn(**{k: v for k, v in collate(one_per_row([e]), pad).items() if k != "n_real"})[0].item() for e in ex)
    assert abs(together.item() - apart) < 1e-4
    assert padded["n_real"].item() == sum(len(e.input_ids) for e in ex)


def test_token_loss_matches_the_model_own_loss(tiny_tokenizer):
    model = build_model(tiny_tokenizer).eval()
    batch = collate(one_per_row(examples(tiny_tokenizer, 1)), tiny_tokenizer.pad_token_id)
    total, n = TokenLoss(model)(batch["input_ids"], batch["position_ids"], batch["labels"])
    reference = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    assert torch.allclose(total / n, reference, atol=1e-6)


def test_per_example_attention_matches_the_masked_attention(tiny_tokenizer):
    """Loss and gradients are the same with tunesmith's per-example SDPA as with the
    block-diagonal mask transformers builds, including a padded row."""
    from tunesmith.train.attention import NAME, use_packed_attention

    model = build_model(tiny_tokenizer)
    rows = pack(examples(tiny_tokenizer, 7), max_seq_len=90)
    assert len(rows) > 1 and len({len(r) for r in rows}) > 1  # several rows, padding in some
    batch = collate(rows, tiny_tokenizer.pad_token_id)
    args = (batch["input_ids"], batch["position_ids"], batch["labels"])

    def loss_and_grads():
        model.zero_grad()
        loss, _ = TokenLoss(model)(*args)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    masked_loss, masked_grads = loss_and_grads()
    assert use_packed_attention(model) and model.config._attn_implementation == NAME
    packed_loss, packed_grads = loss_and_grads()
    assert abs(masked_loss - packed_loss) < 1e-4
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(masked_grads, packed_grads))


def test_repeated_key_value_heads_give_the_grouped_attention():
    """The fp32 GPU path repeats key/value heads instead of asking SDPA for grouped heads
    (no fp32 kernel takes them); the grouping must be the one `enable_gqa` uses."""
    from tunesmith.train.attention import repeat_kv_heads

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 8, 16, 8), torch.randn(2, 2, 16, 8), torch.randn(2, 2, 16, 8)
    grouped = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    repeated = F.scaled_dot_product_attention(q, *repeat_kv_heads(k, v, 8), is_causal=True)
    assert torch.allclose(grouped, repeated, atol=1e-6)


def test_bf16_attention_on_a_cpu_runs_in_fp32_and_returns_bf16():
    """torch's CPU attention kernel is twice as slow in bf16 as in fp32, so train/attention.py
    upcasts: the output is exactly fp32 attention of the bf16 inputs, cast back, and the
    gradients reach the bf16 inputs in bf16."""
    from tunesmith.train.attention import packed_sdpa_forward

    torch.manual_seed(0)
    q = torch.randn(2, 4, 12, 8, dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(2, 2, 12, 8, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]])  # two examples per row
    out, _ = packed_sdpa_forward(None, q, k, v, None, position_ids=positions)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 12, 4, 8)
    expected = torch.cat([
        F.scaled_dot_product_attention(q[:, :, s].float(), k[:, :, s].float(), v[:, :, s].float(), is_causal=True,
                                       enable_gqa=True)
        for s in (slice(0, 5), slice(5, 12))
    ], dim=2).to(torch.bfloat16).transpose(1, 2)
    assert torch.equal(out, expected)
    out.float().square().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 and t.grad.abs().sum() > 0 for t in (q, k, v))
