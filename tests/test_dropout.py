import torch
from torch import nn

from tiny import build_model
from tunesmith.train.dropout import BitDropout, use_bit_dropout


def test_drops_the_right_share_and_keeps_the_expectation():
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = BitDropout(0.05).train()(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.05) < 0.002
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.95))
    assert abs(y.mean().item() - 1.0) < 0.01


def test_is_identity_in_eval_mode_and_seeded_in_training():
    x = torch.randn(3, 7, 5)
    assert torch.equal(BitDropout(0.5).eval()(x), x)
    torch.manual_seed(1)
    a = BitDropout(0.3)(x)
    torch.manual_seed(1)
    b = BitDropout(0.3)(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, x)


def test_gradient_flows_through_kept_elements_only():
    x = torch.randn(1000, requires_grad=True)
    y = BitDropout(0.2)(x)
    y.sum().backward()
    kept = y.detach() != 0
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.8))
    assert torch.all(x.grad[~kept] == 0)


def test_swaps_every_lora_dropout(tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_model(tiny_tokenizer), LoraConfig(r=2, lora_dropout=0.1, target_modules=["q_proj", "down_proj"]))
    assert use_bit_dropout(model) == 4  # 2 layers x 2 targets
    dropouts = [m for m in model.modules() if isinstance(m, (nn.Dropout, BitDropout)) and getattr(m, "p", 0) > 0]
    assert dropouts and all(isinstance(m, BitDropout) and m.p == 0.1 for m in dropouts)


def test_keeps_a_bool_mask_for_backward_with_the_same_gradients():
    """The plain `x * (keep.float() * scale)` saved a 4-byte mask per element; the bool mask
    is 1 byte and gives the same output and gradient bit for bit."""
    from measure import saved_bytes

    x = torch.randn(64, 100, requires_grad=True)
    torch.manual_seed(3)
    y, saved = saved_bytes(lambda: BitDropout(0.1)(x))
    assert saved == x.numel()  # the bool mask alone
    torch.manual_seed(3)
    dropout = BitDropout(0.1)
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    keep = bits.view(torch.int16)[:n].view(x.shape) >= dropout.threshold
    plain = x * (keep.to(x.dtype) * (1.0 / 0.9))
    assert torch.equal(y, plain)
    grad = torch.randn_like(x)
    assert torch.equal(torch.autograd.grad(y, x, grad)[0], torch.autograd.grad(plain, x, grad)[0])
    with torch.no_grad():
        _, saved = saved_bytes(lambda: BitDropout(0.1)(x.detach()))
    assert saved == 0  # an input without gradient keeps no mask
