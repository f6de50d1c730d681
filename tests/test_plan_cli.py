"""`tunesmith plan`: time from FLOPs, cost from the price catalog, the recommendation, the
advice when nothing fits, calibration from a real run, and the pre-flight in `train`."""

import json
import re

import pytest

from test_train_cli import FAST, tunesmith
from tiny import order_rows, write_rows
from tunesmith.catalog.gpu import gpu, load_gpus
from tunesmith.catalog.prices import cheapest as cheapest_offers, load_prices
from tunesmith.models.arch import count_params
from tunesmith.models.facts import model_facts
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
    from tunesmith.catalog.model_configs import catalog_entry
    from tunesmith.train.setup import prepare_model
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
    assert plan["tokens"] == {"per_epoch": 20_000_000, "epochs": 2.0, "total": 40_000_000, "from": "--tokens",
                              "max_steps": None}
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
    # Spot pays for the expected preemptions: more hours than on demand, at the spot price (the
    # cheapest known for one machine with that many H100s, here one: the guide's $2.00-3.00, since the
    # snapshot's $1.00 at Mithril is for 8-GPU machines only; on demand $1.29 at Hyperbolic).
    h100 = [o for o in plan["options"] if o["gpu"] == "H100-SXM"][0]
    best = cheapest_offers(load_prices(), "H100-SXM", h100["count"])
    assert h100["count"] == 1 and h100["spot_hours"] > h100["hours"]
    assert (h100["provider_spot"], h100["spot_per_gpu_hour"]) == ("market range (guide)", [2.0, 3.0])
    assert (h100["provider_on_demand"], h100["on_demand_per_gpu_hour"]) == ("hyperbolic", [1.29, 1.29])
    assert h100["cost_spot"] == pytest.approx(best["spot"].spot_mid * h100["spot_hours"], rel=0.01)
    assert h100["cost_on_demand"] == pytest.approx(best["on_demand"].on_demand_mid * h100["hours"], rel=0.01)


def test_your_own_prices_change_the_recommendation(tmp_path):
    prices = tmp_path / "prices.csv"
    prices.write_text("provider,gpu,on_demand,spot,as_of,source\n"
                      "cheapcloud,L40S,0.40,0.10,2026-11-01,our contract\n")
    plan, _ = plan_json("--model", "llama-3.1-8b", "--seq-len", "1024", "--batch", "1", "--gradient-checkpointing",
                        "--tokens", "5M", "--prices", prices)
    r = plan["recommendation"]
    # Without the file: the A100-40GB on spot (the snapshot's $0.18 at Prime Intellect); with it, the L40S.
    assert (r["gpu"], r["pricing"]) == ("L40S", "spot")
    l40s = [o for o in plan["options"] if o["gpu"] == "L40S"][0]
    assert (l40s["provider_spot"], l40s["provider_on_demand"]) == ("cheapcloud", "cheapcloud")
    assert l40s["price_as_of"] == l40s["spot_as_of"] == l40s["on_demand_as_of"] == "2026-11-01"
    # Regression: price_as_of was the on-demand offer's date next to the spot offer's provider (the
    # built-in AWS A10G of 2026-11-29 next to the snapshot's aws spot of 2026-11-30).
    a10g = [o for o in plan["options"] if o["gpu"] == "A10G"][0]
    assert (a10g["provider_on_demand"], a10g["on_demand_as_of"]) == ("AWS (SkyPilot catalog)", "2026-11-29")
    assert (a10g["provider_spot"], a10g["spot_as_of"]) == ("aws", "2026-11-30") and a10g["price_as_of"] == "2026-11-30"


def test_nothing_fits_exits_1_with_the_guides_remedies_in_order():
    result = tunesmith("plan", "--model", "llama-3.1-70b", "--method", "full", "--seq-len", "4096", "--batch", "4",
                       "--tokens", "50M", check=False)
    assert result.returncode == 1
    text = " ".join(result.stdout.split())
    assert "nothing fits with 10% headroom" in text
    # Full fine-tuning peaks at the optimizer step: a smaller batch helps only once the
    # optimizer state is smaller, so it comes after the 8-bit optimizer.
    steps = [text.index(flag) for flag in ("--gradient-checkpointing", "--optimizer adamw_8bit", "--batch 1", "--gpus 8")]
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
    assert result.returncode == 2 and "no-such-model: not a catalog alias, a folder with config.json" in result.stderr
    result = tunesmith("plan", "--model", "llama-3.1-8bb", check=False)  # a bare name is an alias, mistyped
    assert result.returncode == 2 and "did you mean llama-3.1-8b?" in result.stderr
    assert parse_tokens("1.5B") == 1_500_000_000 and parse_tokens("350k") == 350_000


def test_make_plan_on_one_gpu_type_and_count():
    facts, where = model_facts("mistral-7b-v0.3")
    run = Run(facts, where, Setup(seq_len=1024, micro_batch=2, gradient_checkpointing=True), 10_000_000, 1, "test")
    plan = make_plan(run, load_gpus(), load_prices(), count=2, only_gpu="a100-80gb")
    assert [(o["gpu"], o["count"]) for o in plan["options"]] == [("A100-80GB", 2)]


def test_n_gpus_are_priced_only_by_machines_with_n():
    """Regression: 4 x L40S was priced at Prime Intellect's $0.26 spot, the rate of a 1-GPU machine;
    no machine with 4 L40S is offered at it, and `launch` asks SkyPilot for L40S:4 on one machine.
    The cheapest real one in the snapshot: AWS g6e.12xlarge, $2.9366 an hour on spot, $0.7341 per GPU."""
    facts, where = model_facts("mistral-7b-v0.3")
    run = Run(facts, where, Setup(seq_len=1024, micro_batch=2, gradient_checkpointing=True), 10_000_000, 1, "test")
    four = make_plan(run, load_gpus(), load_prices(), count=4, only_gpu="L40S")["options"][0]
    assert (four["count"], four["provider_spot"], four["spot_per_gpu_hour"]) == (4, "aws", [0.7341, 0.7341])
    assert four["cost_spot"] == pytest.approx(0.7341 * 4 * four["spot_hours"], rel=1e-3)
    assert (four["provider_on_demand"], four["on_demand_per_gpu_hour"]) == ("primeintellect", [0.65, 0.65])
    one = make_plan(run, load_gpus(), load_prices(), count=1, only_gpu="L40S")["options"][0]
    assert (one["provider_spot"], one["spot_per_gpu_hour"]) == ("primeintellect", [0.26, 0.26])


def test_a_count_no_machine_is_offered_with_has_no_price():
    """Lambda rents the A10 one to a machine: 2 x A10 gets no price (not 2 x $0.75), and the
    recommendation and the printed plan say so as for any unpriced GPU."""
    facts, where = model_facts("qwen2.5-0.5b")
    run = Run(facts, where, Setup(seq_len=1024), 5_000_000, 1, "test")
    plan = make_plan(run, load_gpus(), load_prices(), count=2, only_gpu="A10")
    (two,) = plan["options"]
    assert two["headroom_ok"] and two["hours"] is not None
    assert (two["cost_spot"], two["cost_on_demand"], two["provider_spot"], two["provider_on_demand"]) == (None,) * 4
    assert (two["spot_per_gpu_hour"], two["on_demand_per_gpu_hour"], two["price_as_of"]) == (None, None, None)
    assert plan["recommendation"]["why"].endswith("no price known for a machine with 2 of it (add yours with "
                                                  "--prices FILE.csv)")
    printed = " ".join(tunesmith("plan", "--model", "qwen2.5-0.5b", "--seq-len", "1024", "--tokens", "5M",
                                 "--gpu", "A10", "--gpus", "2").stdout.split())
    assert "no price for a machine of 2 x A10 (add yours: --prices FILE.csv)" in printed


# ---------------------------------------------------------------- calibration and pre-flight (through train)

@pytest.fixture(scope="module")
def cpu_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plan")
    data = write_rows(tmp / "train.jsonl", order_rows(30))
    run = tmp / "run"
    result = tunesmith("train", "--model", tiny_model_dir, "--data", data, "--out", run, "--no-progress",
                       "--set", "train.max_steps=3", "--set", "train.grad_accum=2", *FAST)
    return run, result, tiny_model_dir, data


def test_train_runs_the_preflight_and_writes_plan_json(cpu_run):
    run, result, _, _ = cpu_run
    assert "pre-flight: peak ~" in result.stdout and ": fits" in result.stdout
    plan = json.loads((run / "plan.json").read_text())
    assert plan["this_machine"]["device"]["type"] == "cpu"
    assert plan["this_machine"]["fits"] is True and plan["this_machine"]["preflight"]["enforced"] is True
    assert plan["tokens"]["per_epoch"] > 0 and plan["options"]


def test_epochs_auto_follows_the_token_count():
    from tunesmith.config import build_config
    from tunesmith.plan.build import build_plan
    from tunesmith.plan.device import Device
    from tunesmith.plan.inputs import TokenCount

    cfg = build_config({"model": {"source": "smollm2-135m"}})
    cpu = Device(type="cpu", name="test CPU", memory_gb=64, available_gb=60)
    for tokens, epochs in ((499_999, 3), (500_000, 2), (4_999_999, 2), (5_000_000, 1)):
        plan = build_plan(cfg, TokenCount(tokens), cpu, gpus=load_gpus(), prices=[], matmul_flops=lambda dtype: 50e9)
        assert (plan["tokens"]["epochs"], plan["tokens"]["total"]) == (epochs, tokens * epochs)
        assert f"train.epochs auto: {epochs} for {tokens:,} training tokens per epoch" in " ".join(plan["notes"])


def test_plan_calibrates_from_a_runs_measured_tokens_per_second(cpu_run):
    run, _, model, _ = cpu_run
    measured = json.loads((run / "plan_vs_actual.json").read_text())["tokens_per_s"]["actual"]  # the run's mean
    plan, _ = plan_json("--model", model, "--seq-len", "128", "--batch", "2", "--lora-r", "4", "--tokens", "1M",
                        "--epochs", "1", "--calibrate", run)
    assert plan["calibration"]["summary"].startswith(f"calibrated from {run}: {measured:,.0f} tokens/s")
    # The same setup on the same machine: 1M tokens at the measured rate.
    assert plan["this_machine"]["hours"] == pytest.approx(1e6 / measured / 3600, rel=0.01)
    text = tunesmith("plan", "--model", model, "--tokens", "1M", "--calibrate", run).stdout
    assert "calibrated from" in " ".join(text.split())


def test_calibrate_needs_a_run_folder(tmp_path):
    result = tunesmith("plan", "--model", "smollm2-135m", "--calibrate", tmp_path, check=False)
    assert result.returncode == 2 and "no metrics.jsonl there" in result.stderr


def test_train_refuses_a_run_that_cannot_fit_before_loading_anything(tmp_path):
    """A local folder with Llama-3.1-70B's config (and weights no loader will reach): the
    refusal must come from the planner alone, before the data stage writes anything."""
    from big_model import write_big_model_folder

    model = write_big_model_folder(tmp_path / "llama-70b")
    data = write_rows(tmp_path / "train.jsonl", order_rows(10))
    refused = tunesmith("train", "--model", model, "--data", data, "--out", tmp_path / "run", "--no-progress",
                        check=False)
    assert refused.returncode == 1
    message = " ".join(refused.stderr.split())
    assert "pre-flight: this run needs ~" in message and "GPUs that would fit: 8 x H200" in message
    assert "several GPUs: `tunesmith train --nproc N`" in message
    assert "--no-preflight" in message
    assert not (tmp_path / "run").exists()  # stopped before cleaning or loading


@pytest.mark.parametrize("config", ["configs/smollm2-lora-cpu.yaml", "configs/llama-3.1-8b-qlora-gpu.yaml"])
def test_example_configs_plan(config):
    from pathlib import Path

    path = Path(__file__).parent.parent / config
    plan, code = plan_json(path, "--tokens", "1M")
    assert code == 0 and plan["recommendation"] is not None
    assert plan["setup"]["method"] in ("lora", "qlora")


# ---------------------------------------------------------------- numbers a user can trust

@pytest.mark.parametrize("args, message", [
    (["--tokens", "inf"], "--tokens 'inf': expected a finite number of tokens"),
    (["--tokens", "nan"], "--tokens 'nan': expected a finite number of tokens"),
    (["--tokens", "1e30"], "--tokens '1e30': 1e+30 tokens per epoch is above 10T"),
    (["--tokens", "0.5"], "--tokens '0.5': must be at least 1 token"),
    (["--gpus", "-2"], "Invalid value for '--gpus': Input should be greater than or equal to 1"),
    (["--gpus", "0"], "Invalid value for '--gpus': Input should be greater than or equal to 1"),
    (["--seq-len", "8"], "Invalid value for '--seq-len': Input should be greater than or equal to 16"),
    (["--batch", "0"], "Invalid value for '--batch': Input should be greater than or equal to 1"),
    (["--epochs", "inf"], "--epochs inf: train.epochs: expected a finite number"),
    (["--epochs", "0"], "--epochs 0"),
    (["--strategy", "zero9"], "--strategy zero9: not a strategy; choose one of ddp"),
])
def test_numbers_out_of_range_are_usage_errors_naming_the_flag(args, message):
    """Regression: --tokens inf/nan crashed (OverflowError, ValueError), 1e30 overflowed the
    table, --gpus -2 printed -0.02 hours, --gpus 0 silently meant "pick", and --epochs inf
    recommended "$nan, inf h" or was blamed on a --set nobody typed."""
    result = tunesmith("plan", "--model", "llama-3.1-8b", "--tokens", "20M", *args, check=False)
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr and "this is a bug" not in result.stderr
    assert message in " ".join(result.stderr.split())


def test_large_valid_numbers_print_without_overflowing_the_table():
    result = tunesmith("plan", "--model", "llama-3.1-70b", "--method", "full", "--tokens", "9T", "--epochs", "1000",
                       "--batch", "64", check=False)
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr
    rows = [line for line in result.stdout.splitlines() if line.split()[:1] in (["H100-SXM"], ["A100-80GB"])]
    # Each GPU row stays on one line: hours and dollars in compact form, no wrapped cells.
    assert len(rows) == 2 and all(re.search(r"e\+\d\d h", row) and re.search(r"\$\d\.\d+e\+\d\d", row) for row in rows)
    plan, _ = plan_json("--model", "llama-3.1-70b", "--method", "full", "--tokens", "9T", "--epochs", "1000")
    assert plan["tokens"]["total"] == 9e15 and all(o["hours"] > 0 for o in plan["options"])


def test_durations_and_dollars_read_as_minutes_and_cents():
    from tunesmith.cli import _hours, _money

    assert [_hours(h) for h in (0.001, 0.2, 0.99, 2.5, 12.54, 1234.6, 5.33e11)] == [
        "<1 min", "12 min", "59 min", "2.50 h", "12.5 h", "1,235 h", "5.33e+11 h"]
    assert [_money(c) for c in (0.004, 0.04, 12.345, 12345.6, 1.5e15)] == [
        "<$0.01", "$0.04", "$12.35", "$12,346", "$1.5e+15"]


def test_a_small_run_shows_minutes_and_cents_in_the_table_and_the_recommendation():
    """Regression: a short run printed "1 x L40S for $0.00, 0.00 h"."""
    args = ("--model", "llama-3.1-8b", "--gradient-checkpointing", "--tokens", "2M")
    plan, _ = plan_json(*args)
    r = plan["recommendation"]
    assert r["hours"] < 1 and r["cost"] < 1  # figures keep their precision in the JSON
    minutes = f"{r['hours'] * 60:.0f} min"
    text = " ".join(tunesmith("plan", *args).stdout.split())
    assert f"recommended: {r['count']} x {r['gpu']} for ${r['cost']:.2f}, {minutes} (" in text
    row = [o for o in plan["options"] if (o["gpu"], o["count"]) == (r["gpu"], r["count"])][0]
    assert f"{row['hours'] * 60:.0f} min ${row['cost_on_demand']:.2f}" in text


def test_max_steps_sets_the_token_count_with_a_note():
    """Regression: plan.json said 65,982 tokens for a run that max_steps stopped at 10,511."""
    plan, _ = plan_json("--model", "qwen2.5-0.5b", "--tokens", "5M", "--epochs", "3", "--batch", "2", "--grad-accum", "4",
                        "--seq-len", "1024", "--set", "train.max_steps=10")
    assert plan["tokens"]["total"] == 10 * 2 * 4 * 1024 and plan["tokens"]["max_steps"] == 10
    assert any(note.startswith("train.max_steps = 10 sets the length: 10 steps x 2 rows x grad-accum 4 x 1024 "
                               "tokens = 81,920 tokens") for note in plan["notes"])


# ---------------------------------------------------------------- remedies

def test_a_remedy_that_does_not_lower_the_peak_is_not_listed():
    """Regression: `--batch 1 --grad-accum 8: peak 1482.2 GB -> still too big` repeated the
    line before it: full fine-tuning peaks at the optimizer step, which the batch does not touch."""
    facts, where = model_facts("llama-3.1-70b")
    run = Run(facts, where, Setup(method="full", seq_len=4096, micro_batch=4), 50_000_000, 1, "test")
    steps = advice(run, load_gpus(), load_prices())
    peaks = [s["peak_gb"] for s in steps]
    assert peaks == sorted(peaks, reverse=True) and len(set(peaks)) == len(peaks)
    assert [s["change"].split(" (")[0] for s in steps] == [
        "--gradient-checkpointing", "then --optimizer adamw_8bit", "then --batch 1 --grad-accum 4",
        "then --gpus 8 --gpu H200"]


def test_the_eight_gpu_remedy_prefers_the_cheapest_priced_gpu_that_fits():
    """Regression: the last remedy named the largest GPU, which has no price, even where
    priced ones fit 8-way."""
    from tunesmith.catalog.prices import Price

    facts, where = model_facts("llama-3.1-8b")
    run = Run(facts, where, Setup(method="full", seq_len=4096, micro_batch=8), 10_000_000, 1, "test")
    # The built-in prices alone: the guide's ranges price the H100-SXM, A100-80GB and L40S only.
    builtin = load_prices(skypilot=False, snapshot=False)
    last = advice(run, load_gpus(), builtin)[-1]
    assert last["change"].startswith("then --gpus 8 --gpu H100-SXM (")
    assert "the cheapest priced GPU that fits 8-way, ~$" in last["change"] and last["fits"] == "8 x H100-SXM"
    cheap = Price("test", "A100-40GB", (0.10, 0.10), None, "2026-01", "test")
    assert advice(run, load_gpus(), builtin + [cheap])[-1]["fits"] == "8 x A100-40GB"
    # With the snapshot of SkyPilot's catalog, priced for 8-GPU machines: the L40S (AWS g6e.48xlarge, $0.3766
    # per GPU-hour on spot) beats the A100-40GB (AWS p4d.24xlarge, $0.5325). Prime Intellect's $0.18 for an
    # A100-40GB, which chose it before, is a 1-GPU machine's.
    assert advice(run, load_gpus(), load_prices(skypilot=False))[-1]["fits"] == "8 x L40S"
    unpriced = advice(run, load_gpus(), [])[-1]
    assert "no price is known for any GPU that fits 8-way (add yours: --prices FILE.csv)" in unpriced["change"]


# ---------------------------------------------------------------- this machine

def test_qlora_cannot_run_on_a_machine_without_cuda():
    """Regression: "this machine: fits" for a QLoRA plan on a CPU, which cannot load 4-bit weights."""
    from tunesmith.plan.device import Device
    from tunesmith.plan.planner import local_option

    facts, where = model_facts("smollm2-135m")
    cpu = Device(type="cpu", name="test CPU", memory_gb=64, available_gb=60)
    here = local_option(Run(facts, where, Setup(method="qlora", device="cpu", dtype="fp32"), 10**6, 1, "t"), cpu)
    assert here["fits"] is True and here["runs_here"] is False
    assert here["cannot_run"].startswith("QLoRA's 4-bit base needs a CUDA GPU and bitsandbytes; this machine has no CUDA")
    eight_bit = local_option(Run(facts, where, Setup(optimizer="adamw_8bit", device="cpu", dtype="fp32"), 10**6, 1, "t"), cpu)
    assert eight_bit["cannot_run"].startswith("the adamw_8bit optimizer needs a CUDA GPU")
    gpu = Device(type="cuda", name="NVIDIA L4", memory_gb=24, available_gb=22, catalog_gpu="L4")
    no_bnb = local_option(Run(facts, where, Setup(method="qlora"), 10**6, 1, "t"), gpu, bitsandbytes=False)
    assert no_bnb["cannot_run"] == "QLoRA's 4-bit base needs bitsandbytes, which is not installed: pip install bitsandbytes"
    assert local_option(Run(facts, where, Setup(method="qlora"), 10**6, 1, "t"), gpu, bitsandbytes=True)["runs_here"]


def test_plan_says_a_qlora_run_cannot_run_here_without_cuda():
    import importlib.util

    plan, _ = plan_json("--model", "smollm2-135m", "--method", "qlora", "--tokens", "1M")
    here = plan["this_machine"]
    cuda = here["device"]["type"] == "cuda"
    assert here["runs_here"] is (cuda and importlib.util.find_spec("bitsandbytes") is not None)
    if not cuda:
        text = " ".join(tunesmith("plan", "--model", "smollm2-135m", "--method", "qlora", "--tokens", "1M").stdout.split())
        assert "cannot run here: QLoRA's 4-bit base needs a CUDA GPU and bitsandbytes" in text
        assert ": fits" not in text


def test_cpu_time_is_the_executed_work_over_the_matmul_rate_times_the_measured_efficiency():
    """No timed assert: the rate is injected, the arithmetic is checked."""
    from tunesmith.config import build_config
    from tunesmith.plan.build import build_plan
    from tunesmith.plan.device import Device
    from tunesmith.plan.inputs import TokenCount, setup_from_config
    from tunesmith.plan.throughput import cpu_efficiency

    cfg = build_config({"model": {"source": "smollm2-135m"}, "train": {"max_seq_len": 256, "epochs": 1}})
    cpu = Device(type="cpu", name="test CPU", memory_gb=64, available_gb=60)
    plan = build_plan(cfg, TokenCount(2_000_000), cpu, gpus=load_gpus(), prices=[], matmul_flops=lambda dtype: 50e9)
    here = plan["this_machine"]
    facts, _ = model_facts("smollm2-135m")
    executed = flops_per_token(facts, setup_from_config(cfg, device="cpu"))["executed"]
    factor = cpu_efficiency().value
    assert here["flops_per_s"] == pytest.approx(50e9 * factor)
    assert here["hours"] == pytest.approx(2e6 * executed / (50e9 * factor) / 3600, rel=1e-3)
    assert here["time_from"].startswith(f"estimated from a measured fp32 matmul rate of 50 GFLOP/s x {factor:g} (")
    assert here["setup"]["device"] == "cpu" and here["setup"]["dtype"] == "fp32"
    assert plan["setup"]["device"] == "cuda" and "double_quant" not in plan["setup"]


def test_a_bf16_run_on_a_cpu_is_timed_by_the_bf16_matmul_and_its_own_efficiency():
    from tunesmith.config import build_config
    from tunesmith.plan.build import build_plan
    from tunesmith.plan.device import Device
    from tunesmith.plan.inputs import TokenCount
    from tunesmith.plan.throughput import cpu_efficiency

    rates = {"fp32": 50e9, "bf16": 120e9}
    cpu = Device(type="cpu", name="test CPU", memory_gb=64, available_gb=60)
    factor = cpu_efficiency("bf16").value
    assert factor != cpu_efficiency().value
    for method, dtype, rate in [("lora", "bf16", 120e9 * factor), ("full", "fp32", 50e9 * cpu_efficiency().value)]:
        cfg = build_config({"model": {"source": "smollm2-135m", "dtype": "bfloat16"}, "method": {"name": method},
                            "train": {"max_seq_len": 256, "epochs": 1}})
        asked = []
        plan = build_plan(cfg, TokenCount(2_000_000), cpu, gpus=load_gpus(), prices=[],
                          matmul_flops=lambda d: asked.append(d) or rates[d])
        # Full fine-tuning keeps fp32 weights on a CPU whatever model.dtype says.
        assert asked == [dtype]
        assert plan["this_machine"]["flops_per_s"] == pytest.approx(rate)
        assert plan["this_machine"]["time_from"].startswith(f"estimated from a measured {dtype} matmul rate of")


def test_plan_estimates_this_cpus_time_without_calibration():
    plan, _ = plan_json("--model", "smollm2-135m", "--tokens", "100k")
    here = plan["this_machine"]
    if here["device"]["type"] == "cpu":
        assert here["hours"] > 0 and "estimated from a measured fp32 matmul rate of" in here["time_from"]
        text = " ".join(tunesmith("plan", "--model", "smollm2-135m", "--tokens", "100k").stdout.split())
        assert "(estimated from a measured fp32 matmul rate of" in text


# ---------------------------------------------------------------- calibration

def test_a_cpu_calibration_sets_only_this_machines_time_and_says_so(cpu_run):
    """Regression: after --calibrate the footer said "calibrated" but the GPU rows did not change."""
    run, _, model, _ = cpu_run
    plan, _ = plan_json("--model", model, "--seq-len", "128", "--batch", "2", "--lora-r", "4", "--tokens", "1M",
                        "--epochs", "1", "--calibrate", run)
    assert all(o["mfu"] == 0.25 and not o["mfu_calibrated"] for o in plan["options"])
    assert plan["calibration"]["gpu_rows"] is False and plan["calibration"]["this_machine"] is True
    assert "the GPU rows keep the 25% MFU default; sets this machine's time" in plan["calibration"]["effect"]
    assert plan["this_machine"]["time_from"].startswith(f"calibrated from {run}: ")
    text = " ".join(tunesmith("plan", "--model", model, "--tokens", "1M", "--calibrate", run).stdout.split())
    assert "which says nothing about GPUs: the GPU rows keep the 25% MFU default" in text


def test_a_gpu_calibration_replaces_the_mfu_of_every_gpu_row_and_says_which(cpu_run, tmp_path):
    import shutil

    run, _, model, _ = cpu_run
    gpu_run = tmp_path / "gpu-run"
    gpu_run.mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(run / name, gpu_run / name)
    device = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "catalog_gpu": "H100-SXM"}
    (gpu_run / "plan.json").write_text(json.dumps({"this_machine": {"device": device}}))
    plan, _ = plan_json("--model", model, "--seq-len", "128", "--batch", "2", "--lora-r", "4", "--tokens", "1M",
                        "--epochs", "1", "--calibrate", gpu_run)
    measured = plan["calibration"]["flops_per_s"] / 989e12
    assert all(o["mfu"] == pytest.approx(measured, rel=1e-3) and o["mfu_calibrated"] for o in plan["options"])
    assert plan["calibration"]["gpu_rows"] is True and plan["calibration"]["this_machine"] is False
    assert "replaces the 25% default on every GPU row (measured on H100-SXM" in plan["calibration"]["effect"]
    # Same setup on the GPU it ran on: the measured tokens/s back.
    h100 = [o for o in plan["options"] if o["gpu"] == "H100-SXM"][0]
    tps = plan["calibration"]["tokens_per_s"]
    assert h100["hours"] == pytest.approx(1e6 / tps / 3600, rel=0.01)
    full, _ = plan_json("--model", model, "--method", "full", "--tokens", "1M", "--calibrate", gpu_run)
    assert not any(o["mfu_calibrated"] for o in full["options"])
    assert "it trained lora, this plan is full: the GPU rows keep" in full["calibration"]["effect"]


def test_calibrate_uses_the_runs_own_token_count_when_the_config_data_is_gone(cpu_run, tmp_path):
    """Regression: `plan CONFIG --calibrate RUN` printed "no token count" when the config's
    data file was not on this machine."""
    run, _, _, _ = cpu_run
    config = tmp_path / "config.yaml"
    config.write_text((run / "config.yaml").read_text().replace(str(run.parent / "train.jsonl"), "gone/train.jsonl"))
    plan, _ = plan_json(config, "--calibrate", run)
    report = json.loads((run / "data" / "report.json").read_text())
    assert plan["tokens"]["per_epoch"] == report["tokens"]["per_epoch"] > 0
    assert plan["tokens"]["from"].startswith(f"data.train gone/train.jsonl not found here; calibrated run {run}: ")
    assert plan["this_machine"]["hours"] > 0


def _copy_run(run, folder):
    """The run without plan_vs_actual.json: calibrate then reads metrics.jsonl, whose errors
    these tests are about (test_plan_actual.py has that file's)."""
    import shutil

    shutil.copytree(run, folder, ignore=shutil.ignore_patterns("adapter", "checkpoints", "data", "plan_vs_actual.json"))
    return folder


@pytest.mark.parametrize("file, content, message", [
    ("metrics.jsonl", None, "no metrics.jsonl there"),
    ("metrics.jsonl", b"\xff\xfe{}\n", "metrics.jsonl:1: not UTF-8 text"),
    ("metrics.jsonl", b'{"step": 1, "tokens_per_s": 5}\n{"step": 2,\n', "metrics.jsonl:2: not valid JSON"),
    ("metrics.jsonl", b"[1, 2]\n", "metrics.jsonl:1: expected a JSON object, found list; each line is one logged step"),
    ("metrics.jsonl", b'{"step": 1, "tokens_per_s": "fast"}\n', 'metrics.jsonl:1: tokens_per_s = "fast" is not a speed'),
    ("metrics.jsonl", b'{"step": 1, "loss": 2.0}\n', "metrics.jsonl: no step with tokens_per_s logged yet"),
    ("plan.json", None, "no plan.json there"),
    ("plan.json", b"{oops", "plan.json:1:2: not valid JSON"),
    ("plan.json", b"[]", "plan.json: expected a JSON object"),
    ("plan.json", b'{"this_machine": {}}', "plan.json: no this_machine.device with type cuda or cpu"),
    ("config.yaml", None, "no config.yaml there"),
    ("config.yaml", b"train: [", "config.yaml"),
])
def test_every_file_calibrate_reads_gives_one_clear_error(cpu_run, tmp_path, file, content, message):
    from tunesmith.errors import UsageError
    from tunesmith.plan.inputs import calibrate

    run = _copy_run(cpu_run[0], tmp_path / "run")
    if content is None:
        (run / file).unlink()
    else:
        (run / file).write_bytes(content)
    with pytest.raises(UsageError, match=re.escape(message)):
        calibrate(run, load_gpus())


def test_calibrate_errors_through_the_cli(tmp_path, cpu_run):
    result = tunesmith("plan", "--model", "smollm2-135m", "--calibrate", tmp_path / "nope", check=False)
    assert result.returncode == 2 and "--calibrate" in result.stderr and "not a folder" in result.stderr
    run = _copy_run(cpu_run[0], tmp_path / "run")
    (run / "metrics.jsonl").write_bytes(b"\x00\xff")
    result = tunesmith("plan", "--model", "smollm2-135m", "--calibrate", run, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{run / 'metrics.jsonl'}:1: not UTF-8 text" in " ".join(result.stderr.split())


# ---------------------------------------------------------------- plan.json == plan

# Fields that legitimately differ between RUN/plan.json and `tunesmith plan RUN/config.yaml`:
# what this machine had free at that moment, the CPU's matmul rate (measured in each process)
# and the time derived from it, and the pre-flight that only train runs.
PER_PROCESS = {"hours", "flops_per_s", "time_from", "preflight"}


def test_train_writes_the_plan_that_plan_prints_for_the_same_config(cpu_run):
    """Regression: RUN/plan.json said grad_accum 1 (config: 4), trained_fraction 1.0 (0.42),
    4.88 GB (4.14), device cuda/bf16/double_quant for an fp32 CPU LoRA run, and the whole
    epoch's tokens where max_steps stopped the run early. One function builds both now."""
    run, _, _, data = cpu_run
    written = json.loads((run / "plan.json").read_text())
    planned, _ = plan_json(run / "config.yaml", "--dataset", data)
    # The train command names the config and data plan was given; train's own has a placeholder.
    assert planned["recommendation"].pop("train_command") == (f"tunesmith train {run / 'config.yaml'} "
                                                              f"--set data.train={data} --nproc 1")
    assert written["recommendation"].pop("train_command") == "tunesmith train CONFIG.yaml --nproc 1"
    for key in set(written) | set(planned):
        if key != "this_machine":
            assert written[key] == planned[key], key
    here_w, here_p = written["this_machine"], planned["this_machine"]
    assert {k: v for k, v in here_w.items() if k not in PER_PROCESS | {"device"}} == {
        k: v for k, v in here_p.items() if k not in PER_PROCESS | {"device"}}
    device_w, device_p = here_w["device"], here_p["device"]
    assert {k: device_w[k] for k in ("type", "name", "memory_gb")} == {k: device_p[k] for k in ("type", "name", "memory_gb")}
    # What the run really was, in both.
    assert written["setup"]["grad_accum"] == 2 and written["setup"]["micro_batch"] == 2
    assert written["setup"]["trained_fraction"] < 1.0
    assert written["tokens"]["total"] == 3 * 2 * 2 * 128 and written["tokens"]["max_steps"] == 3
    assert written["setup"]["device"] == "cuda" and "double_quant" not in written["setup"]
    assert here_w["setup"]["device"] == "cpu" and here_w["setup"]["dtype"] == "fp32"
    assert here_w["preflight"]["enforced"] is True and "preflight" not in here_p


def test_the_plan_prints_the_train_command_of_its_recommendation(tmp_path):
    """Plan and train agree: the recommendation comes with the command that runs it, one
    process per GPU, and the strategy only when there are several. Regression: the plan sized
    8-GPU FSDP runs and said "planning only"; nothing told the user how to start one."""
    big = tunesmith("plan", "--model", "llama-3.1-8b", "--method", "full", "--tokens", "20M", "--gpu", "A100-40GB")
    lines = big.stdout.splitlines()
    assert ("run it: tunesmith train CONFIG.yaml --set model.source=llama-3.1-8b --set method.name=full "
            "--nproc 8 --set distributed.strategy=fsdp") in lines  # one line, whatever the terminal's width
    text = " ".join(big.stdout.split())
    assert "CONFIG.yaml: your run config" in text
    assert "planning only" not in text and "one GPU today" not in text
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  source: llama-3.1-8b\n")
    # On an H100 it fits one GPU.
    small, code = plan_json(config, "--tokens", "20M", "--seq-len", "1024", "--gpu", "H100-SXM")
    r = small["recommendation"]
    assert code == 0 and r["count"] == 1 and r["strategy"] is None
    assert r["train_command"] == f"tunesmith train {config} --set train.max_seq_len=1024 --nproc 1"


def test_several_gpus_replicate_when_a_replica_fits_and_shard_when_it_does_not():
    """DDP is the default where a whole replica fits each GPU with headroom (no gathers);
    otherwise FSDP. A strategy given (flag or distributed.strategy) is used as given."""
    from tunesmith.config import build_config
    from tunesmith.plan.build import build_plan
    from tunesmith.plan.device import Device
    from tunesmith.plan.inputs import TokenCount

    cpu = Device(type="cpu", name="test CPU", memory_gb=64, available_gb=60)

    def plan(model, gpu, **distributed):
        cfg = build_config({"model": {"source": model}, "method": {"name": "full"}, "distributed": distributed})
        return build_plan(cfg, TokenCount(20_000_000), cpu, gpus=load_gpus(), prices=load_prices(), gpu_count=2,
                          only_gpu=gpu, matmul_flops=lambda dtype: 50e9)

    small, big = plan("qwen2.5-0.5b", "H100-SXM"), plan("llama-3.1-8b", "H200")
    assert small["recommendation"]["strategy"] == small["setup"]["strategy"] == "ddp"
    assert small["recommendation"]["train_command"].endswith("--nproc 2 --set distributed.strategy=ddp")
    assert big["recommendation"]["strategy"] == big["setup"]["strategy"] == "fsdp"
    chosen = plan("qwen2.5-0.5b", "H100-SXM", strategy="zero2")
    assert chosen["recommendation"]["train_command"] == "tunesmith train CONFIG.yaml --nproc 2 --set distributed.strategy=zero2"
    assert any(note.startswith("zero2 trains through DeepSpeed, which `tunesmith train` does not run yet") for note in chosen["notes"])
    assert not any("DeepSpeed" in note for note in small["notes"])


def test_a_strategy_set_on_the_command_line_is_named_once_in_the_train_command():
    plan, _ = plan_json("--model", "qwen2.5-0.5b", "--method", "full", "--tokens", "20M", "--gpus", "2",
                        "--gpu", "H100-SXM", "--set", "distributed.strategy=zero2")
    assert plan["recommendation"]["train_command"] == (
        "tunesmith train CONFIG.yaml --set model.source=qwen2.5-0.5b --set method.name=full "
        "--nproc 2 --set distributed.strategy=zero2")


def test_spot_time_adds_half_a_checkpoint_interval_and_a_measured_resume_per_preemption():
    from tunesmith.config import build_config
    from tunesmith.plan.inputs import TokenCount, run_from_config
    from tunesmith.plan.planner import checkpoint_hours, spot_wall_hours
    from tunesmith.plan.throughput import assumptions

    spot = assumptions()["spot"]
    assert spot["resume_seconds"] == 9.4 and "bench/resume_time.py" in spot["source"]
    cfg = build_config({"model": {"source": "llama-3.1-8b"}, "train": {"epochs": 1, "save_every": 100}})
    run = run_from_config(cfg, TokenCount(10_000_000))
    total_steps = 10_000_000 / run.step_tokens  # packed rows assumed full: fractional steps
    base = 10.0 + checkpoint_hours(run, run.setup)
    interval = 10.0 * 100 / total_steps
    expected = base + 0.05 * base * (interval / 2 + 8 / 60 + 9.4 / 3600)
    assert spot_wall_hours(run, run.setup, 10.0) == pytest.approx(expected, rel=1e-9)
