"""`tunesmith plan`: time from FLOPs, cost from the price catalog, the recommendation, the
advice when nothing fits, calibration from a real run, and the pre-flight in `train`."""

import json

import pytest

from test_train_cli import FAST, tunesmith
from tiny import order_rows, write_rows
from tunesmith.catalog.gpu import gpu, load_gpus
from tunesmith.catalog.prices import load_prices
from tunesmith.plan.arch import count_params
from tunesmith.plan.facts import model_facts
from tunesmith.plan.memory import Setup
from tunesmith.plan.inputs import Run, parse_tokens
from tunesmith.plan.planner import advice, make_plan
from tunesmith.plan.throughput import Mfu, flops_per_token, hours

SCHEMA_OPTION = {"gpu", "count", "fits", "peak_gb", "hours", "cost_on_demand", "cost_spot"}


def plan_json(*args):
    result = tunesmith("plan", *args, "--json", check=False)
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout), result.returncode


# ---------------------------------------------------------------- time

def test_full_fine_tuning_costs_six_flops_per_weight_and_lora_four_plus_six_per_adapter_weight():
    facts, _ = model_facts("llama-3.1-8b")
    counts = count_params(facts)
    matmul = counts["total"] - counts["embedding"]  # the embedding is a lookup
    attention = 2 * 32 * 4096 * 2048  # forward QK^T and AV over half a 2,048-token row
    full = flops_per_token(facts, Setup(method="full", seq_len=2048))
    assert full["model"] == pytest.approx(6 * matmul + 3 * attention)
    lora = Setup(method="lora", seq_len=2048)
    adapters = 41_943_040  # r=16 on all seven projections of 32 layers
    assert flops_per_token(facts, lora)["model"] == pytest.approx(4 * matmul + 6 * adapters + 2 * attention)
    checkpointed = flops_per_token(facts, Setup(method="lora", seq_len=2048, gradient_checkpointing=True))
    assert checkpointed["model"] == flops_per_token(facts, lora)["model"]
    head = 128256 * 4096  # the head is not recomputed
    assert checkpointed["executed"] == pytest.approx(checkpointed["model"] + 2 * (matmul - head) + 2 * adapters + attention)


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("gc", [False, True])
def test_work_per_token_matches_torchs_flop_counter_on_a_real_step(method, gc):
    """SmolLM2-135M's shape made trainable by the loop's own prepare_model; torch counts the
    matmuls of forward and backward. Its counter has no formula for the CPU attention kernel,
    so attention is left out of both sides."""
    import torch
    import transformers
    from torch.utils.flop_counter import FlopCounterMode

    from tunesmith.config import build_config
    from tunesmith.plan.facts import catalog_entry
    from tunesmith.train.loop import prepare_model
    from tunesmith.train.loss import TokenLoss

    config = catalog_entry("smollm2-135m")["config"]
    cfg = build_config({"method": {"name": method, "dropout": 0.0}, "model": {"dtype": "float32"},
                        "train": {"gradient_checkpointing": gc}})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config))
    loss_fn = TokenLoss(prepare_model(model, cfg, torch.device("cpu")).train())
    seq = 128
    ids = torch.randint(0, config["vocab_size"], (1, seq + 1))  # + 1: every one of `seq` positions trained
    with FlopCounterMode(display=False) as counter:
        loss, _ = loss_fn(ids, torch.arange(seq + 1)[None], ids.clone())
        loss.backward()
    facts, _ = model_facts("smollm2-135m")
    setup = Setup(method=method, seq_len=seq + 1, gradient_checkpointing=gc, lora_dropout=0.0, device="cpu", dtype="fp32")
    passes = (3 if method == "full" else 2) + gc  # attention terms inside `executed`
    attention = 2 * 2 * facts.layers * facts.heads * facts.head_dim * setup.seq_len / 2
    predicted = flops_per_token(facts, setup)["executed"] - passes * attention
    assert predicted * seq == pytest.approx(counter.get_total_flops(), rel=0.01)


def test_hours_divide_work_by_the_gpus_peak_and_mfu():
    facts, _ = model_facts("llama-3.1-8b")
    setup = Setup(method="full", seq_len=2048)
    h100, a100 = gpu("H100-SXM"), gpu("A100-80GB")
    work = flops_per_token(facts, setup)["model"]
    one = hours(1e9, facts, setup, h100, 1, Mfu(0.3, "test"))
    assert one == pytest.approx(1e9 * work / (989e12 * 0.3) / 3600)
    assert hours(1e9, facts, setup, a100, 1, Mfu(0.3, "test")) / one == pytest.approx(989 / 312)
    assert hours(1e9, facts, setup, h100, 8, Mfu(0.3, "test")) == pytest.approx(one / 8 / 0.9)


# ---------------------------------------------------------------- the plan

def test_plan_json_schema_and_the_recommendation_is_the_cheapest_option_with_headroom():
    plan, code = plan_json("--model", "llama-3.1-8b", "--seq-len", "2048", "--batch", "2",
                           "--gradient-checkpointing", "--tokens", "20M", "--epochs", "2")
    assert code == 0
    assert plan["params"]["total"] == 8_030_261_248 and plan["params"]["trainable"] == 41_943_040
    assert plan["tokens"] == {"per_epoch": 20_000_000, "epochs": 2.0, "total": 40_000_000, "from": "--tokens"}
    assert {"peak", "weights", "activations", "logits", "optimizer", "cuda_context"} <= set(plan["memory_gb"])
    assert all(SCHEMA_OPTION <= set(o) for o in plan["options"])
    assert {o["gpu"] for o in plan["options"]} == {g.name for g in load_gpus()}
    fitting = [o for o in plan["options"] if o["headroom_ok"]]
    priced = [o for o in fitting if o["cost_spot"] or o["cost_on_demand"]]
    cheapest = min(priced, key=lambda o: min(c for c in (o["cost_spot"], o["cost_on_demand"]) if c))
    r = plan["recommendation"]
    assert (r["gpu"], r["count"]) == (cheapest["gpu"], cheapest["count"])
    too_small = [o for o in plan["options"] if o["gpu"] == "L4"][0]
    assert not too_small["headroom_ok"] or too_small["peak_gb"] < 24 * 0.9
    # Spot pays for the expected preemptions: more hours than on demand, at the spot price.
    h100 = [o for o in plan["options"] if o["gpu"] == "H100-SXM"][0]
    assert h100["spot_hours"] > h100["hours"]
    assert h100["cost_spot"] == pytest.approx(2.5 * h100["spot_hours"], rel=0.01)
    assert h100["cost_on_demand"] == pytest.approx(3.5 * h100["hours"], rel=0.01)


def test_your_own_prices_change_the_recommendation(tmp_path):
    prices = tmp_path / "prices.csv"
    prices.write_text("provider,gpu,on_demand,spot,as_of,source\n"
                      "cheapcloud,A100-40GB,0.40,0.20,2026-11-01,our contract\n")
    plan, _ = plan_json("--model", "llama-3.1-8b", "--seq-len", "1024", "--batch", "1", "--gradient-checkpointing",
                        "--tokens", "5M", "--prices", prices)
    r = plan["recommendation"]
    assert (r["gpu"], r["pricing"]) == ("A100-40GB", "spot")
    a100 = [o for o in plan["options"] if o["gpu"] == "A100-40GB"][0]
    assert a100["provider_spot"] == "cheapcloud" and a100["price_as_of"] == "2026-11-01"


def test_nothing_fits_exits_1_with_the_guides_remedies_in_order():
    result = tunesmith("plan", "--model", "llama-3.1-70b", "--method", "full", "--seq-len", "4096", "--batch", "4",
                       "--tokens", "50M", check=False)
    assert result.returncode == 1
    text = " ".join(result.stdout.split())
    assert "nothing fits with 10% headroom" in text
    steps = [text.index(flag) for flag in ("--gradient-checkpointing", "--batch 1", "--optimizer adamw_8bit", "--gpus 8")]
    assert steps == sorted(steps)
    assert "-> 8 x H200" in text


def test_advice_steps_build_on_each_other_and_shrink_the_peak():
    facts, where = model_facts("llama-3.1-8b")
    run = Run(facts, where, Setup(seq_len=4096, micro_batch=8), None, 1, None)
    steps = advice(run, load_gpus())
    assert [s["set"] for s in steps[:3]] == [["train.gradient_checkpointing=true"],
                                            ["train.micro_batch=1", "train.grad_accum=8"], ["method.name=qlora"]]
    peaks = [s["peak_gb"] for s in steps]
    assert peaks[:3] == sorted(peaks[:3], reverse=True)
    assert steps[2]["fits"] in {"L4", "A10", "RTX-4090"}  # QLoRA 8B at batch 1 with checkpointing: a 24 GB card


def test_plan_without_tokens_gives_memory_and_says_what_is_missing():
    plan, code = plan_json("--model", "qwen2.5-0.5b", "--seq-len", "512")
    assert code == 0
    assert plan["tokens"]["total"] is None and all(o["hours"] is None for o in plan["options"])
    assert any("--tokens" in note for note in plan["notes"])


def test_plan_counts_dataset_tokens_with_the_models_tokenizer(tiny_model_dir, tmp_path):
    data = write_rows(tmp_path / "train.jsonl", order_rows(30))
    plan, _ = plan_json("--model", tiny_model_dir, "--dataset", data, "--seq-len", "256", "--epochs", "3")
    check = json.loads(tunesmith("data", "check", data, "--model", tiny_model_dir, "--max-seq-len", "256",
                                 "--json").stdout)
    assert plan["tokens"]["per_epoch"] == check["tokens"]["per_epoch"] > 0
    assert plan["tokens"]["total"] == 3 * check["tokens"]["per_epoch"]
    assert "30 rows after cleaning" in plan["tokens"]["from"]
    share = check["tokens"]["trained_per_epoch"] / check["tokens"]["per_epoch"]
    assert plan["setup"]["trained_fraction"] == pytest.approx(min(1.0, 1.25 * share))


def test_bad_inputs_are_one_clear_error():
    result = tunesmith("plan", "--model", "llama-3.1-8b", "--tokens", "lots", check=False)
    assert result.returncode == 2 and "--tokens 'lots': expected a number of tokens like" in result.stderr
    result = tunesmith("plan", "--model", "llama-3.1-8b", "--gpu", "TPU-v5", check=False)
    assert result.returncode == 2 and "--gpu TPU-v5: not in the GPU catalog" in result.stderr
    result = tunesmith("plan", "--model", "no-such-model", check=False)
    assert result.returncode == 2 and "not a catalog alias, folder or .gguf file" in result.stderr
    assert parse_tokens("1.5B") == 1_500_000_000 and parse_tokens("350k") == 350_000


def test_make_plan_on_one_gpu_type_and_count():
    facts, where = model_facts("mistral-7b-v0.3")
    run = Run(facts, where, Setup(seq_len=1024, micro_batch=2, gradient_checkpointing=True), 10_000_000, 1, "test")
    plan = make_plan(run, load_gpus(), load_prices(), count=2, only_gpu="a100-80gb")
    assert [(o["gpu"], o["count"]) for o in plan["options"]] == [("A100-80GB", 2)]


# ---------------------------------------------------------------- calibration and pre-flight (through train)

@pytest.fixture(scope="module")
def cpu_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plan")
    data = write_rows(tmp / "train.jsonl", order_rows(30))
    run = tmp / "run"
    result = tunesmith("train", "--model", tiny_model_dir, "--data", data, "--out", run, "--no-progress",
                       "--set", "train.max_steps=3", *FAST)
    return run, result, tiny_model_dir


def test_train_runs_the_preflight_and_writes_plan_json(cpu_run):
    run, result, _ = cpu_run
    assert "pre-flight: peak ~" in result.stdout and ": fits" in result.stdout
    plan = json.loads((run / "plan.json").read_text())
    assert plan["this_machine"]["device"]["type"] == "cpu"
    assert plan["this_machine"]["fits"] is True and plan["this_machine"]["preflight"] == "enforced"
    assert plan["tokens"]["per_epoch"] > 0 and plan["options"]


def test_plan_calibrates_from_a_runs_measured_tokens_per_second(cpu_run):
    run, _, model = cpu_run
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    plan, _ = plan_json("--model", model, "--seq-len", "128", "--batch", "2", "--lora-r", "4", "--tokens", "1M",
                        "--calibrate", run)
    assert plan["calibration"].startswith(f"calibrated from {run}: {last['tokens_per_s']:,.0f} tokens/s")
    # The same setup on the same machine: 1M tokens at the measured rate.
    assert plan["this_machine"]["hours"] == pytest.approx(1e6 / last["tokens_per_s"] / 3600, rel=0.01)
    text = tunesmith("plan", "--model", model, "--tokens", "1M", "--calibrate", run).stdout
    assert "calibrated from" in " ".join(text.split())


def test_calibrate_needs_a_run_folder(tmp_path):
    result = tunesmith("plan", "--model", "smollm2-135m", "--calibrate", tmp_path, check=False)
    assert result.returncode == 2 and "no metrics.jsonl there" in result.stderr


def test_train_refuses_a_run_that_cannot_fit_before_loading_anything(tmp_path):
    """The alias names a catalog config with no weights on this machine: a refusal must come
    from the planner alone, and --no-preflight must get past it (to the loader's own error)."""
    data = write_rows(tmp_path / "train.jsonl", order_rows(10))
    args = ["train", "--model", "llama-3.1-70b", "--data", data, "--out", tmp_path / "run", "--no-progress"]
    refused = tunesmith(*args, check=False)
    assert refused.returncode == 1
    message = " ".join(refused.stderr.split())
    assert "pre-flight: this run needs ~" in message and "it fits 1 x" in message
    assert "--no-preflight" in message
    assert not (tmp_path / "run" / "data").exists()  # stopped before cleaning or loading
    forced = tunesmith(*args, "--no-preflight", check=False)
    assert forced.returncode == 2 and "pre-flight" not in forced.stderr


@pytest.mark.parametrize("config", ["configs/smollm2-lora-cpu.yaml", "configs/llama-3.1-8b-qlora-gpu.yaml"])
def test_example_configs_plan(config):
    from pathlib import Path

    path = Path(__file__).parent.parent / config
    plan, code = plan_json(path, "--tokens", "1M")
    assert code == 0 and plan["recommendation"] is not None
    assert plan["setup"]["method"] in ("lora", "qlora")
