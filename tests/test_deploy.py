"""`tunesmith deploy`: the exact `vllm serve` command for a run, vLLM's LoRA limits refused
with the reason, and a SkyPilot service YAML on the GPU the planner picks, parsed by
SkyPilot's own parser, with no API key in it.

Deploy reads only a run's config.yaml and adapter files, so most tests write those files
(as train writes them) instead of training; tests/test_bad_input.py meets a real trained run."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.catalog.sky_names import sky_name
from tunesmith.config import RunConfig
from tunesmith.errors import TunesmithError, UsageError
from tunesmith.serve.deploy import VLLM_MAX_LORA_RANKS, max_lora_rank, pick_gpu, read_served, vllm_base

KEY = "sk-test-never-in-a-file-4821"


def make_run(folder: Path, base: str, *, method: str = "lora", r: int = 4, **adapter: object) -> Path:
    """A finished run's files as train writes them: config.yaml, and adapter/adapter_config.json
    with tunesmith.json (or model/config.json for a full fine-tune)."""
    cfg = RunConfig.model_validate({"model": {"source": base}, "method": {"name": method, "r": r},
                                    "train": {"max_seq_len": 128}, "output": {"dir": str(folder)}})
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(cfg.to_yaml())
    if method == "full":
        (folder / "model").mkdir()
        (folder / "model" / "config.json").write_text((Path(base) / "config.json").read_text())
        return folder
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["q_proj", "v_proj"],
              "bias": "none", "modules_to_save": None, "use_dora": False, "base_model_name_or_path": base, **adapter}
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter" / "tunesmith.json").write_text(json.dumps({"base": {"source": base}}))
    return folder


@pytest.fixture
def run(tmp_path, tiny_model_dir):
    return make_run(tmp_path / "my-run", str(tiny_model_dir))


@pytest.fixture(autouse=True)
def environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.sky catalog: the shipped prices only
    monkeypatch.setenv("COLUMNS", "300")


def deploy(*args: object):
    result = CliRunner().invoke(app, ["deploy", *map(str, args)])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


# ---------------------------------------------------------------- --target vllm

def test_the_vllm_command_for_a_run_is_exact(run, tiny_model_dir):
    result = deploy(run, "--target", "vllm")
    assert result.stdout.splitlines() == [
        f"vllm serve {tiny_model_dir} --enable-lora --lora-modules my-run={run}/adapter --max-lora-rank 8 "
        '--max-model-len 128 --host 127.0.0.1 --port 8000 --api-key "${VLLM_API_KEY:?set VLLM_API_KEY}"',
        "# then, with the same VLLM_API_KEY set: curl http://127.0.0.1:8000/v1/chat/completions "
        "-H \"Authorization: Bearer $VLLM_API_KEY\" -H 'Content-Type: application/json' -d '{\"model\": \"my-run\", "
        "\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}], \"max_tokens\": 64}'",
    ]
    assert f"base {tiny_model_dir}: a folder on this machine" in result.stderr
    assert KEY not in result.stdout  # the key is read by the shell when the command runs
    again = deploy(run, "--target", "vllm", "--context", "4096", "--port", "9000")
    assert "--max-model-len 4096 --host 127.0.0.1 --port 9000 " in again.stdout


def test_a_full_fine_tune_is_served_as_its_folder(tmp_path, tiny_model_dir):
    run = make_run(tmp_path / "full", str(tiny_model_dir), method="full")
    line = deploy(run, "--target", "vllm").stdout.splitlines()[0]
    assert line.startswith(f"vllm serve {run}/model --served-model-name full --max-model-len 128 --host 127.0.0.1 ")
    assert "--enable-lora" not in line


@pytest.mark.parametrize("r, expected", [(1, 1), (4, 8), (8, 8), (9, 16), (300, 320), (512, 512)])
def test_max_lora_rank_is_the_smallest_value_vllm_accepts_that_holds_r(r, expected):
    assert max_lora_rank(r) == expected and expected in VLLM_MAX_LORA_RANKS


@pytest.mark.parametrize("adapter, reason", [
    ({"r": 1024}, "adapter rank r=1024 is beyond vLLM's largest --max-lora-rank (512); retrain with method.r <= 512"),
    ({"use_dora": True}, "a DoRA adapter (use_dora): vLLM does not load DoRA"),
    ({"modules_to_save": ["lm_head"]}, "saves whole modules (lm_head, modules_to_save): vLLM only loads adapters "
                                       "without them"),
    ({"bias": "all"}, "the adapter trains bias terms (bias='all')"),
    ({"lora_bias": True}, "the adapter trains bias terms (lora_bias)"),
])
def test_what_vllm_cannot_load_is_refused_with_the_reason_and_the_way_out(tmp_path, tiny_model_dir, adapter, reason):
    run = make_run(tmp_path / "run", str(tiny_model_dir), **adapter)
    with pytest.raises(TunesmithError, match="^" + str(run / "adapter").replace(".", r"\.")) as caught:
        read_served(run)
    assert reason in str(caught.value)
    assert f"tunesmith export {run} --out FOLDER" in str(caught.value)


def test_lora_on_the_vocabulary_is_a_note_not_a_refusal(tmp_path, tiny_model_dir):
    run = make_run(tmp_path / "run", str(tiny_model_dir), target_modules=["q_proj", "lm_head"])
    assert any("LoRA on lm_head: not every vLLM version" in note for note in read_served(run).notes)


def test_the_base_vllm_loads(tmp_path):
    assert vllm_base("meta-llama/Llama-3.1-8B", tmp_path) == ("meta-llama/Llama-3.1-8B", "", False)
    hub, note, local = vllm_base("qwen2.5-0.5b", tmp_path)  # a catalog alias: its hub id
    assert (hub, local) == ("Qwen/Qwen2.5-0.5B", False) and "tunesmith alias of Qwen/Qwen2.5-0.5B" in note
    from tunesmith.models.source import resolve_source

    folder, note, local = vllm_base("smollm2-135m-instruct", tmp_path)  # a GGUF: the folder it was converted to
    assert (folder, local) == (str(Path(resolve_source("smollm2-135m-instruct")).resolve()), True)
    assert (Path(folder) / "config.json").is_file() and "the weights the adapter was trained on" in note
    with pytest.raises(UsageError, match="model.Q4_K_M.gguf"):
        vllm_base(str(tmp_path / "model.Q4_K_M.gguf"), tmp_path)
    with pytest.raises(TunesmithError, match="neither a hub id nor a model folder here"):
        vllm_base(str(tmp_path / "gone"), tmp_path)


# ---------------------------------------------------------------- --target sky

def test_the_service_yaml_runs_vllm_on_the_cheapest_gpu_that_fits_without_the_key(run, tiny_model_dir):
    result = deploy(run, "--target", "sky")
    path = run / "deploy" / "service.yaml"
    text = path.read_text()
    assert KEY not in text and KEY not in result.stdout
    config = yaml.safe_load(text)
    # the tiny model fits every GPU: the cheapest with a price is the RTX 4090 (Hyperbolic's $0.20/hour
    # in the shipped snapshot of SkyPilot's catalog; AWS's L4 at $0.8048 before the snapshot)
    assert config["resources"] == {"accelerators": "RTX4090:1", "ports": 8000}
    assert config["secrets"] == {"VLLM_API_KEY": None}
    assert config["file_mounts"] == {"/tunesmith/model": str(tiny_model_dir), "/tunesmith/adapter": str(run / "adapter")}
    assert config["service"] == {"readiness_probe": {"path": "/health", "initial_delay_seconds": 1200}, "replicas": 1}
    assert config["run"] == ("vllm serve /tunesmith/model --enable-lora --lora-modules my-run=/tunesmith/adapter "
                             "--max-lora-rank 8 --max-model-len 128 --host 0.0.0.0 --port 8000 "
                             '--api-key "${VLLM_API_KEY:?set VLLM_API_KEY}"\n')
    assert "# Serves my-run with vLLM on 1 x RTX-4090 (24 GB, $0.20/hour on demand)" in text
    assert f"sky serve up {path} -n my-run --secret VLLM_API_KEY" in result.stdout
    other = deploy(run, "--target", "sky", "--gpu", "a10g", "--out", run / "a10g.yaml")
    assert yaml.safe_load((run / "a10g.yaml").read_text())["resources"]["accelerators"] == "A10G:1"
    assert "1 x A10G" in other.stdout


def test_a_gpu_too_small_for_the_load_is_refused(run):
    served = read_served(run, context=131072)
    with pytest.raises(UsageError, match="--gpu L4: serving needs .* GB for 100000 sequences of 131,072 tokens"):
        pick_gpu(served, gpu="L4", context=131072, concurrency=100_000)


def test_service_names_skypilot_accepts():
    assert [sky_name(n) for n in ("My_Run.2", "run", "2026-05-run", "--x--")] == [
        "my-run-2", "run", "run-2026-05-run", "x"]


def skypilot_python() -> str | None:
    """A Python with SkyPilot 0.14.1: TUNESMITH_SKYPILOT_PYTHON, `make setup`'s .venv-sky (SkyPilot
    pins click<8.2, which transformers' huggingface-hub does not allow in one environment), or
    this one if it has SkyPilot."""
    candidates = [os.environ.get("TUNESMITH_SKYPILOT_PYTHON"), str(Path(__file__).parents[1] / ".venv-sky/bin/python")]
    found = next((c for c in candidates if c and Path(c).is_file()), None)
    return found or (sys.executable if importlib.util.find_spec("sky") else None)


# One process for all files: importing SkyPilot takes seconds.
PARSE = """
import json, sys
import sky
for path in sys.argv[1:]:
    try:
        task = sky.Task.from_yaml(path)
    except Exception as e:
        print(json.dumps({"refused": str(e)}))
        continue
    (resources,) = task.resources
    print(json.dumps({"version": sky.__version__, "accelerators": resources.accelerators, "ports": resources.ports,
                      "readiness": task.service.readiness_path, "replicas": task.service.min_replicas,
                      "secrets": [ref.name for ref in task._managed_secret_refs], "mounts": task.file_mounts,
                      "name": task.name}))
"""


def test_skypilot_parses_the_service_yaml(run, tiny_model_dir, tmp_path):
    python = skypilot_python()
    if python is None:
        pytest.skip("SkyPilot is not installed (make setup installs it in .venv-sky)")
    deploy(run, "--target", "sky")
    service = run / "deploy" / "service.yaml"
    # the parser checks the schema: the same file with a misspelt service key must be refused
    broken = tmp_path / "broken.yaml"
    broken.write_text(service.read_text().replace("readiness_probe:", "readines_probe:"))
    env = {**os.environ, "HOME": str(tmp_path / "sky-home"), "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"}
    parsed = subprocess.run([python, "-c", PARSE, service, broken], capture_output=True, text=True, env=env,
                            timeout=120)
    assert parsed.returncode == 0, parsed.stderr
    task, refused = map(json.loads, parsed.stdout.splitlines()[-2:])
    # The tiny model fits every GPU: the cheapest 1-GPU machine on demand wins, Hyperbolic's RTX 4090 at
    # $0.20/hour in the shipped snapshot (the L4 was cheapest before the snapshot priced every GPU).
    assert task == {"version": "0.14.1", "accelerators": {"RTX4090": 1}, "ports": ["8000"], "readiness": "/health",
                    "replicas": 1, "secrets": ["VLLM_API_KEY"], "name": "my-run",
                    "mounts": {"/tunesmith/model": str(tiny_model_dir), "/tunesmith/adapter": str(run / "adapter")}}
    assert "readines_probe" in refused["refused"]
