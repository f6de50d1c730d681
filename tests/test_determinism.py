"""Same seed, same data -> bit-identical adapter on CPU; another seed -> a different one."""

import torch
from safetensors.torch import load_file

from tiny import order_rows, write_rows
from tunesmith.config import build_config
from tunesmith.train.setup import train


def run(model_dir, data, out, seed, extra=()):
    cfg = build_config({}, [f"model.source={model_dir}", f"data.train={data}", f"output.dir={out}",
                            "train.max_steps=3", "train.max_seq_len=128", "train.micro_batch=2",
                            "method.r=4", f"train.seed={seed}", *extra])
    result = train(cfg, progress=False)
    return result, load_file(out / "adapter" / "adapter_model.safetensors")


def test_same_seed_gives_identical_adapter_tensors(tiny_model_dir, tmp_path):
    data = write_rows(tmp_path / "d.jsonl", order_rows(30))
    first, a = run(tiny_model_dir, data, tmp_path / "a", seed=1)
    second, b = run(tiny_model_dir, data, tmp_path / "b", seed=1)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.final_loss == second.final_loss
    # LoRA B starts at zero: equal tensors must mean the same training, not no training
    assert any(k.endswith("lora_B.weight") and a[k].abs().sum() > 0 for k in a)
    _, c = run(tiny_model_dir, data, tmp_path / "c", seed=2)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_gradient_accumulation_matches_one_big_batch(tiny_model_dir, tmp_path):
    """Loss is normalised over the whole step's tokens, so 2x2 equals 1x4 (dropout off)."""
    data = write_rows(tmp_path / "d.jsonl", order_rows(30))
    common = ["method.dropout=0.0", "train.packing=false"]
    _, big = run(tiny_model_dir, data, tmp_path / "big", 5, [*common, "train.micro_batch=4", "train.grad_accum=1"])
    _, acc = run(tiny_model_dir, data, tmp_path / "acc", 5, [*common, "train.micro_batch=2", "train.grad_accum=2"])
    for k in big:
        assert torch.allclose(big[k], acc[k], atol=1e-6), k
