"""`tunesmith export` end to end through the real CLI on the tiny model: the folder loads with
plain transformers (no peft, no tunesmith) and answers as base + adapter did."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from test_train_cli import train_four_steps, tunesmith
from tiny import order_rows, write_rows


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    return train_four_steps(tiny_model_dir, tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "merged"
    result = tunesmith("export", run, "--out", out)
    return out, result


def test_merged_folder_loads_with_plain_transformers(exported, run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, result = exported
    names = sorted(p.name for p in out.iterdir())
    assert not any(name.startswith("adapter") for name in names), names
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in names), names
    assert any(name.endswith(".safetensors") for name in names), names
    model = AutoModelForCausalLM.from_pretrained(out)  # plain: no peft, no tunesmith
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.dtype == torch.float32
    generation = json.loads((out / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    assert tokenizer.eos_token_id in (eos if isinstance(eos, list) else [eos])
    assert tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id) == "<|im_end|>"  # the end-of-turn token trained
    assert tokenizer.chat_template
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    record = json.loads((out / "export.json").read_text())
    assert {k: record[k] for k in ("method", "merged", "dtype")} == {"method": "lora", "merged": True,
                                                                      "dtype": "float32"}
    assert record["checked"] == 4 and record["identical"] == record["checked"]  # 4 held-out rows, all equal
    assert "greedy answers: 4 of 4 identical to base + adapter" in result.stdout
    assert (out / "tunesmith.json").read_bytes() == (run / "adapter" / "tunesmith.json").read_bytes()
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "- merged" in card
    assert "LoRA adapter of `" in card and ", merged into the base's weights, trained with tunesmith." in card
    assert 'AutoModelForCausalLM.from_pretrained("THIS_FOLDER")' in card and "PeftModel" not in card
    assert "## Training" in card and f"# {run.name}" in card


def test_merged_weights_equal_base_plus_b_times_a(exported, run, tiny_model_dir):
    out, _ = exported
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    base = load_file(tiny_model_dir / "model.safetensors")
    merged = {}
    for shard in out.glob("*.safetensors"):
        merged.update(load_file(shard))
    key_a = sorted(k for k in adapter if "lora_A" in k)[0]
    layer = key_a.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
    b = adapter[key_a.replace("lora_A", "lora_B")]
    assert b.abs().sum() > 0, "training moved B off zero, or the test proves nothing"
    expected = base[f"{layer}.weight"] + (b @ adapter[key_a]) * scale
    assert torch.allclose(merged[f"{layer}.weight"], expected, atol=1e-6, rtol=0)
    assert not torch.equal(merged[f"{layer}.weight"], base[f"{layer}.weight"])
    untouched = "model.embed_tokens.weight"
    assert torch.equal(merged[untouched], base[untouched])


def test_adapter_only_loads_with_peft(run, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "adapter"
    result = tunesmith("export", run, "--out", out, "--adapter-only")
    assert "greedy answers: 4 of 4 identical to base + adapter" in result.stdout
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    assert any("lora_A" in name for name, _ in tuned.named_parameters())
    assert AutoTokenizer.from_pretrained(out).chat_template
    assert json.loads((out / "export.json").read_text())["merged"] is False
    # portable: the base as the user named it at train time, and the run's model card, not peft's template
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    assert (out / "README.md").read_text() == (run / "adapter" / "README.md").read_text()
    assert json.loads((out / "tunesmith.json").read_text())["base"]["source"] == str(tiny_model_dir)


def test_an_adapter_folder_alone_exports_on_another_machine(run, exported, tmp_path):
    """Only RUN/adapter was copied: its tunesmith.json names the base; with no held-out rows the
    check asks the general set's first prompts. The merge is the same as from the run folder."""
    shipped = tmp_path / "shipped" / "orders-adapter"
    shutil.copytree(run / "adapter", shipped)
    out = tmp_path / "merged"
    result = tunesmith("export", shipped, "--out", out, "--check", "3")
    assert "greedy answers: 3 of 3 identical to base + adapter" in result.stdout
    from_run, _ = exported
    weights = {}
    for folder in (from_run, out):
        weights[folder] = {}
        for shard in folder.glob("*.safetensors"):
            weights[folder].update(load_file(shard))
    assert weights[from_run].keys() == weights[out].keys()
    assert all(torch.equal(weights[from_run][k], weights[out][k]) for k in weights[out])
    assert (out / "tunesmith.json").read_bytes() == (run / "adapter" / "tunesmith.json").read_bytes()
    assert not (out / "README.md").exists()  # no run files to build a card from
    assert json.loads((out / "export.json").read_text())["run"] == str(shipped.resolve())


def test_refuses_a_foreign_folder_and_replaces_its_own_export(run, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = tunesmith("export", run, "--out", foreign, check=False)
    assert result.returncode == 2
    assert "is not empty and is not an earlier export" in " ".join(result.stderr.split())
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    again = tmp_path / "again"
    tunesmith("export", run, "--out", again, "--check", "0")
    tunesmith("export", run, "--out", again, "--check", "1")  # its own earlier export: replaced
    assert json.loads((again / "export.json").read_text())["checked"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "foreign"]  # no temp folder left


def test_a_mismatch_is_an_error_and_leaves_nothing(run, tmp_path, monkeypatch):
    """Guards against publishing a merged folder that answers differently from base + adapter."""
    from tunesmith.errors import TunesmithError
    from tunesmith.serve import export

    monkeypatch.setattr(export, "_count", lambda reference, said: {"checked": len(reference), "identical": 0})
    out = tmp_path / "out"
    with pytest.raises(TunesmithError, match="0 of 2 held-out prompts") as caught:
        export.export_run(run, out, check=2)
    assert caught.value.exit_code == 1
    assert list(tmp_path.iterdir()) == []


def test_a_full_fine_tuning_run_exports(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    data = write_rows(tmp_path / "d.jsonl", order_rows(20))
    run = tmp_path / "full"
    tunesmith("train", "--model", tiny_model_dir, "--data", data, "--out", run, "--no-progress",
              "--set", "method=full", "--set", "train.max_steps=2", "--set", "train.max_seq_len=128")
    out = tmp_path / "exported"
    result = tunesmith("export", run, "--out", out)
    assert "greedy answers: 2 of 2 identical to RUN/model" in result.stdout
    record = json.loads((out / "export.json").read_text())
    assert (record["method"], record["merged"]) == ("full", False)
    model = AutoModelForCausalLM.from_pretrained(out)
    trained = load_file(run / "model" / "model.safetensors")
    assert all(torch.equal(p, trained[name]) for name, p in model.state_dict().items() if name in trained)
    refused = tunesmith("export", run, "--out", tmp_path / "a", "--adapter-only", check=False)
    assert refused.returncode == 2 and "has no adapter" in " ".join(refused.stderr.split())
