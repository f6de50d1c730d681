"""`tunesmith plan --inference`: weights + KV cache per GPU and the price of serving, from the
architecture's exact counts."""

import json
import subprocess
import sys

from dataclasses import replace

import pytest

from tunesmith.catalog.gpu import load_gpus
from tunesmith.catalog.prices import Price, load_prices
from tunesmith.models.facts import model_facts
from tunesmith.catalog.model_configs import catalog_entry
from tunesmith.models.arch import ModelFacts
from tunesmith.plan.serving import RUNTIME_RESERVE_GB, kv_bytes_per_sequence, kv_bytes_per_token, serving_plan


def llama_8b():
    return model_facts("llama-3.1-8b")[0]


def test_the_kv_cache_of_llama_3_1_8b_is_128_kib_per_token():
    # 2 (K and V) x 32 layers x 8 KV heads x 128 dims x 2 bytes
    assert kv_bytes_per_token(llama_8b()) == 131_072


def test_what_fits_where_and_how_many_sequences():
    plan = serving_plan(llama_8b(), load_gpus(), load_prices(skypilot=False, snapshot=False), context=4096, concurrency=16,
                        tokens_per_s=800)
    need = plan["need"]
    assert need["weights_gb"] == pytest.approx(8_030_261_248 * 2 / 1e9)
    assert need["kv_gb_per_sequence"] == pytest.approx(131_072 * 4096 / 1e9)
    assert need["total_gb"] == round(need["weights_gb"] + 16 * need["kv_gb_per_sequence"] + RUNTIME_RESERVE_GB, 2)
    rows = {o["gpu"]: o for o in plan["options"]}
    assert rows["L40S"]["fits"] and not rows["L4"]["fits"] and not rows["A10"]["fits"]
    # 24 GB x 0.9 - 16.06 GB weights - 1.5 GB runtime leaves room for 7 sequences of 4,096 tokens
    assert rows["L4"]["max_sequences"] == 7
    assert rows["L40S"]["max_sequences"] == int((48 * 0.9 - need["weights_gb"] - RUNTIME_RESERVE_GB)
                                                // need["kv_gb_per_sequence"])
    low, high = rows["L40S"]["usd_per_hour"]
    assert rows["L40S"]["usd_per_million_tokens"] == (round(low / (800 * 3600) * 1e6, 4),
                                                      round(high / (800 * 3600) * 1e6, 4))
    assert plan["recommendation"]["gpu"] == "L40S"  # the cheapest priced GPU that fits


def test_without_a_rate_there_is_no_price_per_token():
    plan = serving_plan(llama_8b(), load_gpus(), load_prices(skypilot=False, snapshot=False), context=2048, concurrency=4,
                        tokens_per_s=None)
    assert all(o["usd_per_million_tokens"] is None for o in plan["options"])


def run_plan(*args):
    return subprocess.run([sys.executable, "-m", "tunesmith.cli", "plan", *args], capture_output=True, text=True)


def test_the_cli_prints_the_table_and_json():
    text = run_plan("--model", "llama-3.1-8b", "--inference", "--tokens-per-s", "800")
    assert text.returncode == 0, text.stderr
    printed = " ".join(text.stdout.split())
    assert "bf16 weights 16.1 GB + KV cache 0.54 GB per 4,096-token sequence x 16" in printed
    # Every price tunesmith knows, the snapshot of SkyPilot's catalog included: the cheapest that
    # fits is the one the planner picks from them (the RTX-A6000 at $0.40 in the snapshot read 2026-11-30).
    best = serving_plan(llama_8b(), load_gpus(), load_prices(), context=4096, concurrency=16,
                        tokens_per_s=800)["recommendation"]["gpu"]
    assert f"cheapest that fits: {best}" in printed
    result = run_plan("--model", "llama-3.1-8b", "--inference", "--concurrency", "4", "--json")
    plan = json.loads(result.stdout)
    assert plan["need"]["concurrency"] == 4 and plan["model"]["source"] == "llama-3.1-8b"


def test_nothing_fits_exits_1_and_says_what_to_lower():
    result = run_plan("--model", "llama-3.1-70b", "--inference", "--context", "131072", "--concurrency", "64")
    assert result.returncode == 1
    assert "lower --concurrency or --context" in result.stdout


def test_the_inference_gpus_have_prices_and_a_small_model_goes_to_the_l4():
    """Regression: L4 and A10 showed "no price", so a 0.5B model was sent to an L40S."""
    small = model_facts("qwen2.5-0.5b")[0]
    plan = serving_plan(small, load_gpus(), load_prices(skypilot=False, snapshot=False), context=2048, concurrency=8,
                        tokens_per_s=1000)
    rows = {o["gpu"]: o for o in plan["options"]}
    assert rows["L4"]["usd_per_hour"] == (0.8048, 0.8048) and rows["A10G"]["usd_per_hour"] == (1.006, 1.006)
    assert rows["L4"]["usd_per_million_tokens"] == (round(0.8048 / 3600 * 1e6 / 1000, 4),) * 2  # $0.2236
    assert plan["recommendation"]["gpu"] == "L4"


def test_serving_is_priced_by_machines_with_one_gpu():
    """vLLM serves from one GPU: an offer for 8-GPU machines is no price for it, however cheap per GPU.
    In the snapshot: the L4 on demand is Seeweb's 1-GPU ECS1GPU6 ($0.38), the L40S Prime Intellect's
    1 x L40S ($0.65)."""
    small = model_facts("qwen2.5-0.5b")[0]
    builtin = load_prices(skypilot=False, snapshot=False)
    eights = Price("eights", "L4", (0.10, 0.10), None, "2026-05", "q", gpus_per_machine=8)

    def l4_price(prices):
        plan = serving_plan(small, load_gpus(), prices, context=2048, concurrency=8, tokens_per_s=None)
        return next(o for o in plan["options"] if o["gpu"] == "L4")["usd_per_hour"]

    assert l4_price(builtin + [eights]) == (0.8048, 0.8048)  # AWS's g6.xlarge, a 1-GPU instance
    assert l4_price(builtin + [replace(eights, gpus_per_machine=1)]) == (0.10, 0.10)
    assert l4_price(builtin + [replace(eights, gpus_per_machine=None)]) == (0.10, 0.10)  # any machine
    rows = {o["gpu"]: o for o in serving_plan(small, load_gpus(), load_prices(), context=2048, concurrency=8,
                                               tokens_per_s=None)["options"]}
    assert (rows["L4"]["usd_per_hour"], rows["L40S"]["usd_per_hour"]) == ((0.38, 0.38), (0.65, 0.65))


def test_gemma_3_local_layers_hold_only_their_window_of_the_kv_cache():
    """Gemma 3 1B: 22 of 26 layers attend to the last 512 tokens only, and vLLM keeps no more
    for them; the 4 global layers keep the whole context."""
    facts = model_facts("gemma-3-1b")[0]
    assert (facts.sliding_window, facts.sliding_layers) == (512, 22)
    per_layer_token = 2 * 1 * 256 * 2
    assert kv_bytes_per_sequence(facts, 4096) == per_layer_token * (4 * 4096 + 22 * 512)
    assert kv_bytes_per_sequence(facts, 256) == kv_bytes_per_token(facts) * 256  # inside the window
    assert kv_bytes_per_sequence(llama_8b(), 4096) == kv_bytes_per_token(llama_8b()) * 4096
    gemma2 = model_facts("gemma-2-2b")[0]
    assert (gemma2.sliding_window, gemma2.sliding_layers) == (4096, 13)


def test_layer_types_when_listed_decide_which_layers_are_local():
    config = dict(catalog_entry("gemma-3-1b")["config"], num_hidden_layers=4,
                  layer_types=["sliding_attention", "full_attention", "full_attention", "sliding_attention"])
    assert ModelFacts.from_config(config).sliding_layers == 2
