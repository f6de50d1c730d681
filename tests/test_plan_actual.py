"""Plan vs actual: RUN/plan_vs_actual.json next to the plan it compares against, from a real
run of the tiny model through the CLI and from hand-made run folders (a GPU, spot prices,
resumes, old and broken files), and `plan --calibrate` reading it."""

import json
import re
import shutil

import pytest

from test_train_cli import FAST, train_four_steps, tunesmith
from tunesmith.catalog.prices import Price, cheapest, load_prices, mid
from tunesmith.errors import UsageError
from tunesmith.plan.actual import FILE, plan_vs_actual, pricing_from_env, write_plan_vs_actual


@pytest.fixture(scope="module")
def cpu_run(tiny_model_dir, tmp_path_factory):
    """4 LoRA steps of the tiny model on this CPU, through `tunesmith train`."""
    return train_four_steps(tiny_model_dir, tmp_path_factory.mktemp("actual")), tiny_model_dir


def read(run, name):
    return json.loads((run / name).read_text())


def has(found, **expected):
    """`found` holds these keys with these values (and maybe others)."""
    return {key: found.get(key) for key in expected} == expected


# ---------------------------------------------------------------- a real run

def test_the_planned_side_is_exactly_what_plan_json_predicted_for_this_machine(cpu_run):
    run, _ = cpu_run
    plan, c = read(run, "plan.json"), read(run, FILE)
    here = plan["this_machine"]
    assert c["device"] == here["device"] and c["device"]["type"] == "cpu"
    assert (c["calibrated"], c["time_from"]) == (False, here["time_from"])
    assert c["hours"]["planned"] == here["hours"]
    # A CPU's resident set holds the data the loop keeps: the pre-flight's figure for it is added.
    assert c["peak_memory_gb"]["planned"] == round(here["peak_gb"] + here["preflight"]["memory_gb"]["data"], 3)
    assert c["tokens_per_s"]["planned"] == here["flops_per_s"] / plan["flops_per_token"]["executed"]
    # The derived rate is the one the plan's hours were timed at.
    assert plan["tokens"]["total"] / c["tokens_per_s"]["planned"] / 3600 == pytest.approx(here["hours"], rel=1e-3)


def test_the_actual_side_is_what_the_run_measured(cpu_run):
    run, _ = cpu_run
    record, c = read(run, "train.json"), read(run, FILE)
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert (c["status"], c["complete"], c["tokens"]) == ("completed", True, last["tokens"])
    assert c["steps"] == {"done": 4, "planned": 4, "sessions": 1, "redone": 0}
    # The run's mean: trained tokens over the seconds in its steps, not the last step's rate.
    assert c["tokens_per_s"]["actual"] == last["tokens"] / last["train_seconds"]
    assert last["train_seconds"] == record["train_seconds"] > 0
    [session] = record["sessions"]
    assert c["hours"]["actual"] == session["wall_seconds"] / 3600
    assert c["hours"]["in_steps"] == session["step_seconds"] / 3600 == record["train_seconds"] / 3600
    assert session["wall_seconds"] > session["step_seconds"] > 0  # load, data stage, evals and checkpoints too
    assert c["peak_memory_gb"]["actual"] == record["peak_memory"]["gb"] == session["peak_memory_gb"] > 0.1
    assert "ru_maxrss" in c["peak_memory_gb"]["measure"] == record["peak_memory"]["measure"]
    for name in ("hours", "peak_memory_gb", "tokens_per_s"):
        figure = c[name]
        assert figure["ratio"] == float(f"{figure['actual'] / figure['planned']:.4g}")
    assert c["cost_usd"] == {"planned": None, "actual": None, "ratio": None, "pricing": "on_demand",
                             "reason": "trained on a CPU: no GPU to pay for"}
    assert c["notes"] == []


def test_train_prints_it_and_it_can_be_computed_again_from_the_folder(cpu_run, tmp_path):
    run, model = cpu_run
    data = run.parent / "train.jsonl"
    result = tunesmith("train", "--model", model, "--data", data, "--out", tmp_path / "again", "--no-progress",
                       "--set", "train.max_steps=2", *FAST)
    text = " ".join(result.stdout.split())
    assert f"plan vs actual ({tmp_path / 'again' / FILE})" in text
    assert "peak memory (GB)" in text and "tokens/s" in text and "cost: trained on a CPU: no GPU to pay for" in text
    # What `tunesmith pull` calls for a folder copied from elsewhere: the same comparison.
    copy = shutil.copytree(run, tmp_path / "copy", ignore=shutil.ignore_patterns(FILE))
    again = write_plan_vs_actual(copy, pricing="on_demand")
    assert again == {**read(run, FILE), "run": str(copy)} == read(copy, FILE)


def test_a_stopped_run_is_compared_as_far_as_it_got_and_a_resume_replaces_it(cpu_run, tmp_path):
    """SIGTERM after step 2 (as a preemption notice does), then the same command again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run, model = cpu_run
    out = tmp_path / "run"
    command = [sys.executable, "-m", "tunesmith.cli", "train", "--model", str(model), "--data",
               str(run.parent / "train.jsonl"), "--out", str(out), "--no-progress", "--set", "train.max_steps=8", *FAST]
    env = {**os.environ, "TUNESMITH_PRICING": "spot"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    while process.poll() is None and not ((out / "metrics.jsonl").exists()
                                          and len((out / "metrics.jsonl").read_text().splitlines()) >= 2):
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode == 143
    stopped = read(out, FILE)
    step = read(out, "train.json")["steps_done"]
    assert (stopped["status"], stopped["complete"], stopped["steps"]["done"]) == ("interrupted", False, step)
    assert stopped["cost_usd"]["pricing"] == "spot"
    assert "the run is interrupted, not finished: the figures are for the part it did" in stopped["notes"]
    subprocess.run(command, check=True, capture_output=True)
    done, record = read(out, FILE), read(out, "train.json")
    assert (done["complete"], done["steps"]["sessions"], done["steps"]["redone"]) == (True, 2, 0)
    assert [(s["from_step"], s["to_step"]) for s in record["sessions"]] == [(0, step), (step, 8)]
    assert done["hours"]["actual"] == sum(s["wall_seconds"] for s in record["sessions"]) / 3600
    assert done["hours"]["in_steps"] == sum(s["step_seconds"] for s in record["sessions"]) / 3600
    assert done["peak_memory_gb"]["actual"] == max(s["peak_memory_gb"] for s in record["sessions"])
    assert "2 sessions (resumed 1 times)" in " ".join(done["notes"])


# ---------------------------------------------------------------- calibrate reads it

def test_calibrate_takes_the_runs_mean_speed_from_plan_vs_actual(cpu_run, tmp_path):
    run, model = cpu_run
    copy = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("adapter", "checkpoints"))
    c = read(copy, FILE)
    c["tokens_per_s"]["actual"] = 1234.5  # a rate no step logged: it must come from this file
    (copy / FILE).write_text(json.dumps(c))
    plan = json.loads(tunesmith("plan", "--model", model, "--seq-len", "128", "--batch", "2", "--lora-r", "4",
                                "--tokens", "1M", "--epochs", "1", "--calibrate", copy, "--json").stdout)
    calibration = plan["calibration"]
    assert (calibration["tokens_per_s"], calibration["tokens_per_s_from"]) == (1234.5, "plan_vs_actual.json")
    planned = c["tokens_per_s"]["planned"]
    assert calibration["summary"] == (f"calibrated from {copy}: 1,234 tokens/s of {model} lora on "
                                      f"{c['device']['name']} (plan_vs_actual.json, the run's mean over its 4 steps; "
                                      f"its plan said {planned:,.0f})")
    assert plan["this_machine"]["hours"] == pytest.approx(1e6 / 1234.5 / 3600, rel=1e-3)
    text = " ".join(tunesmith("plan", "--model", model, "--tokens", "1M", "--calibrate", copy).stdout.split())
    assert "(plan_vs_actual.json, the run's mean over its 4 steps; its plan said" in text


def test_without_plan_vs_actual_calibrate_reads_the_last_logged_step(cpu_run, tmp_path):
    from tunesmith.catalog.gpu import load_gpus
    from tunesmith.plan.inputs import calibrate

    run, model = cpu_run
    copy = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("adapter", "checkpoints", FILE))
    last = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()][-1]
    found = calibrate(copy, load_gpus())
    assert (found.tokens_per_s, found.speed_from) == (last["tokens_per_s"], "metrics.jsonl")
    assert found.summary.endswith("(metrics.jsonl, its last logged step, step 4)")
    # A run that trained no step measured no speed there: metrics.jsonl is the next place to look.
    c = read(run, FILE)
    c["tokens_per_s"]["actual"] = None
    (copy / FILE).write_text(json.dumps(c))
    assert calibrate(copy, load_gpus()).speed_from == "metrics.jsonl"


@pytest.mark.parametrize("content, message", [
    (b"{oops", "plan_vs_actual.json:1:2: not valid JSON"),
    (b"[]", "plan_vs_actual.json: no tokens_per_s.actual"),
    (b'{"tokens_per_s": {"actual": "fast"}}', "plan_vs_actual.json: tokens_per_s.actual = 'fast' is not a speed"),
    (b'{"tokens_per_s": {"actual": -3}}', "plan_vs_actual.json: tokens_per_s.actual = -3 is not a speed above 0"),
    (b"\xff\xfe{}", "plan_vs_actual.json:1: not UTF-8 text"),
])
def test_a_broken_plan_vs_actual_stops_calibrate_naming_it(cpu_run, tmp_path, content, message):
    from tunesmith.catalog.gpu import load_gpus
    from tunesmith.plan.inputs import calibrate

    copy = shutil.copytree(cpu_run[0], tmp_path / "run", ignore=shutil.ignore_patterns("adapter", "checkpoints"))
    (copy / FILE).write_bytes(content)
    with pytest.raises(UsageError, match=re.escape(message)):
        calibrate(copy, load_gpus())


# ---------------------------------------------------------------- hand-made run folders

H100 = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "memory_gb": 79.1, "available_gb": 78.5, "count": 1,
        "catalog_gpu": "H100-SXM", "processes": 1, "strategy": None}


def gpu_run(tmp_path, device=None, record=None, this_machine=None):
    """A run folder as a GPU run leaves it: 2 h planned at 100,000 tokens/s and 30 GB; it took
    two sessions (1 h, then 0.5 h, redoing 20 steps), 33 GB, 720M tokens in 7,200 s of steps."""
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    here = {"device": device or H100, "hours": 2.0, "peak_gb": 30.0, "flops_per_s": 1e14,
            "time_from": "H100-SXM at the 25% MFU default", **(this_machine or {})}
    (run / "plan.json").write_text(json.dumps({"this_machine": here, "flops_per_token": {"executed": 1e9}}))
    sessions = [{"from_step": 0, "to_step": 120, "step_seconds": 3000.0, "wall_seconds": 3600.0, "peak_memory_gb": 33.0},
                {"from_step": 100, "to_step": 200, "step_seconds": 4500.0, "wall_seconds": 1800.0, "peak_memory_gb": 32.0}]
    train = {"status": "completed", "steps_done": 200, "steps_planned": 200, "tokens": 720_000_000,
             "train_seconds": 7200.0, "sessions": sessions, "peak_memory": {"gb": 33.0, "measure": "reserved"},
             **(record or {})}
    (run / "train.json").write_text(json.dumps(train))
    return run


def test_spot_cost_is_the_hours_times_that_gpus_cheapest_spot_price(tmp_path, monkeypatch):
    run = gpu_run(tmp_path)
    monkeypatch.setenv("TUNESMITH_PRICING", "spot")
    prices = load_prices()
    c = plan_vs_actual(run, prices=prices)
    spot = mid(cheapest(prices, "H100-SXM")["spot"].spot)
    cost = c["cost_usd"]
    assert (cost["pricing"], cost["gpu"], cost["gpus"], cost["usd_per_gpu_hour"]) == ("spot", "H100-SXM", 1, spot)
    assert cost["actual"] == 1.5 * spot and cost["planned"] == 2.0 * spot and cost["ratio"] == 0.75
    assert has(c["hours"], planned=2.0, actual=1.5, in_steps=7500 / 3600, ratio=0.75)
    assert c["steps"] == {"done": 200, "planned": 200, "sessions": 2, "redone": 20}
    assert has(c["tokens_per_s"], planned=1e5, actual=1e5, ratio=1.0)
    assert has(c["peak_memory_gb"], planned=30.0, actual=33.0, ratio=1.1, planned_from="this_machine.peak_gb",
               measure="reserved")
    assert "2 sessions (resumed 1 times): hours count every session, the 20 steps done again" in " ".join(c["notes"])


def test_on_demand_unless_told_and_every_gpu_of_the_machine_is_paid_for(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNESMITH_PRICING", raising=False)
    eight = {**H100, "count": 8, "processes": 8, "strategy": "fsdp"}
    offer = Price("test-cloud", "H100-SXM", (3.0, 5.0), (2.0, 3.0), "2026-05", "a test")
    c = plan_vs_actual(gpu_run(tmp_path, device=eight), prices=[offer])
    assert c["cost_usd"] == {"planned": 2.0 * 4.0 * 8, "actual": 1.5 * 4.0 * 8, "ratio": 0.75, "pricing": "on_demand",
                             "gpu": "H100-SXM", "gpus": 8, "usd_per_gpu_hour": 4.0,
                             "price_from": "test-cloud as of 2026-05 (midpoint of the cheapest on_demand offer)",
                             "reason": None}
    assert "8 training processes (fsdp): the plan's this_machine figures are for one process" in c["notes"][0]
    spot = plan_vs_actual(gpu_run(tmp_path), prices=[offer], pricing="spot")["cost_usd"]
    assert (spot["usd_per_gpu_hour"], spot["actual"]) == (2.5, 3.75)


@pytest.mark.parametrize("device, prices, reason", [
    ({**H100, "name": "NVIDIA Z80", "catalog_gpu": None}, None, "NVIDIA Z80 is not in the GPU catalog, so it has no price"),
    (H100, [], "no spot price for H100-SXM in the price catalog"),
])
def test_a_gpu_without_a_price_has_no_cost_and_says_why(tmp_path, device, prices, reason):
    c = plan_vs_actual(gpu_run(tmp_path, device=device), prices=prices, pricing="spot")
    assert (c["cost_usd"]["actual"], c["cost_usd"]["reason"]) == (None, reason)
    assert c["hours"]["actual"] == 1.5  # the rest is still compared


def test_pricing_comes_from_the_environment():
    assert pricing_from_env({}) == pricing_from_env({"TUNESMITH_PRICING": " "}) == "on_demand"
    assert pricing_from_env({"TUNESMITH_PRICING": "spot"}) == "spot"
    with pytest.raises(UsageError, match="TUNESMITH_PRICING='cheap': give spot or on_demand"):
        pricing_from_env({"TUNESMITH_PRICING": "cheap"})


def test_an_unfinished_run_and_a_plan_without_time(tmp_path):
    c = plan_vs_actual(gpu_run(tmp_path, record={"status": "failed", "memory_changes": [{"step": 3}]},
                               this_machine={"hours": None, "flops_per_s": None}), prices=[], pricing="on_demand")
    assert (c["complete"], c["hours"]["planned"], c["hours"]["ratio"], c["tokens_per_s"]["planned"]) == \
        (False, None, None, None)
    assert c["tokens_per_s"]["planned_from"] == "the plan has no time for this machine (no flops_per_s)"
    notes = " ".join(c["notes"])
    assert "an out-of-memory error changed the setup mid-run" in notes and "the run is failed, not finished" in notes


def test_a_train_json_from_before_sessions_gives_the_steps_time_and_no_peak(tmp_path):
    run = gpu_run(tmp_path)
    record = read(run, "train.json")
    del record["sessions"], record["peak_memory"]
    (run / "train.json").write_text(json.dumps(record))
    c = plan_vs_actual(run, prices=[], pricing="on_demand")
    assert (c["hours"]["actual"], c["steps"]["sessions"], c["peak_memory_gb"]["actual"]) == (2.0, 0, None)
    assert c["hours"]["measure"].startswith("train.json has no sessions (an older tunesmith)")
    assert c["tokens_per_s"]["actual"] == 1e5


@pytest.mark.parametrize("name, content, message", [
    ("plan.json", None, "no plan.json there, which plan vs actual needs"),
    ("train.json", None, "no train.json there, which plan vs actual needs"),
    ("plan.json", "{oops", "plan.json:1:2: not valid JSON"),
    ("train.json", "[1]", "train.json: expected a JSON object, found list"),
    ("plan.json", '{"this_machine": {}}', "plan.json: no this_machine.device with type cuda or cpu"),
    ("plan.json", json.dumps({"this_machine": {"device": H100, "hours": "2h"}}), "plan.json: this_machine.hours = '2h'"),
    ("train.json", '{"tokens": "many", "train_seconds": 1}', "train.json: tokens = 'many' is not a number"),
    ("train.json", '{"tokens": 1, "train_seconds": 1, "sessions": [{"from_step": 0}]}', "train.json: sessions is not"),
    ("train.json", '{"tokens": 1, "train_seconds": 1, "peak_memory": 3}', "train.json: peak_memory is not"),
])
def test_every_file_it_reads_gives_one_clear_error(tmp_path, name, content, message):
    run = gpu_run(tmp_path)
    if content is None:
        (run / name).unlink()
    else:
        (run / name).write_text(content)
    with pytest.raises(UsageError, match=re.escape(message)):
        plan_vs_actual(run, prices=[], pricing="on_demand")
    with pytest.raises(UsageError, match="not a folder"):
        plan_vs_actual(tmp_path / "nope", prices=[], pricing="on_demand")


# ---------------------------------------------------------------- what train measures

def test_a_gpus_peak_is_what_the_allocator_reserved_plus_the_cuda_context(monkeypatch):
    """The plan's GPU peak is reserved memory + the CUDA context: measured the same way (in GB
    of 1e9 bytes, as the plan counts), not metrics.jsonl's mem_gb (reserved alone, in GiB)."""
    import torch

    from tunesmith.train.fit import CUDA_PEAK, peak_memory

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (30e9, 80e9))  # 50 GB in use now
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 49.5e9)  # so the context is 0.5 GB
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 60e9)
    assert peak_memory(torch.device("cuda", 0)) == {"gb": 60.5, "measure": CUDA_PEAK}


def test_a_cpus_peak_is_the_processs_peak_resident_set():
    import resource

    import torch

    from tunesmith.train.fit import CPU_PEAK, peak_memory

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    found = peak_memory(torch.device("cpu"))
    assert found["measure"] == CPU_PEAK and before - 0.001 <= found["gb"] <= before + 0.1
