"""Serving a finished run elsewhere: the `vllm serve` command for the run's base with its
adapter, and a SkyPilot service YAML that runs that command on the inference GPU the planner
picks. Pure functions on the run folder: they return text and dicts; the CLI prints and writes.

The adapter is checked first against what vLLM loads (its `PEFTHelper` and `LoRAConfig`):
a rank vLLM has no `--max-lora-rank` for, DoRA, `modules_to_save` and LoRA bias terms are
refused with the reason and the way out (serve the merged export instead). A full fine-tune
has no adapter: its RUN/model folder is served as it is.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.catalog.sky_names import SKY_ACCELERATORS, sky_name
from tunesmith.errors import TunesmithError, UsageError
from tunesmith.io import block_yaml

# vLLM accepts only these values for --max-lora-rank (vllm/config/lora.py, MaxLoRARanks); an
# adapter's r must be at most the value given, so the smallest one >= r is the cheapest.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Where vLLM's LoRA support is uncertain across versions: its extra-vocabulary option for
# embedding/lm_head adapters was deprecated in 0.11 and removed after.
VOCAB_MODULES = ("embed_tokens", "lm_head", "wte", "embed_out")
PORT = 8000
API_KEY_ENV = "VLLM_API_KEY"
# The key is read from the environment when the command runs, never written into a file; an
# unset or empty key stops the shell before vLLM starts without one.
API_KEY_ARG = f'"${{{API_KEY_ENV}:?set {API_KEY_ENV}}}"'
# Where the service's files land on the replica.
REMOTE_ROOT = "/tunesmith"


@dataclass(frozen=True)
class Served:
    """What a run serves: the model vLLM loads (a hub id or a folder), and the adapter on it."""

    name: str  # the run folder's name: what clients ask for as "model"
    model: str  # the hub id or folder vLLM loads
    adapter: Path | None  # RUN/adapter; None for a full fine-tune (the model is RUN/model)
    max_lora_rank: int | None
    max_model_len: int
    base: str  # the base as the user named it when training
    notes: list[str] = field(default_factory=list)
    local_model: bool = False  # `model` is a folder on this machine (SkyPilot uploads it)


# ---------------------------------------------------------------- the run and its adapter

def read_served(run: Path, *, context: int | None = None) -> Served:
    """The model and adapter a finished run serves, checked against vLLM's limits.
    UsageError: not a finished run; TunesmithError: an adapter or base vLLM cannot serve."""
    from tunesmith.config import load_run_config
    from tunesmith.io import read_json

    run = Path(run)
    if not run.is_dir():
        what = "is a file, not a run folder" if run.exists() else "run folder not found"
        raise UsageError(f"RUN {run}: {what}; give the folder `tunesmith train --out` wrote")
    cfg = load_run_config(run)
    max_model_len = context or cfg.train.max_seq_len
    name = run.resolve().name
    if cfg.method.name == "full":
        model_dir = run / "model"
        if not model_dir.is_dir():
            raise TunesmithError(f"{model_dir}: not found; this run has no trained model yet (train it first)")
        return Served(name, str(model_dir.resolve()), None, None, max_model_len, cfg.model.source,
                      ["a full fine-tune: vLLM serves RUN/model itself, no adapter"], local_model=True)
    adapter = run / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise TunesmithError(f"{adapter}/adapter_config.json: not found; this run has no trained adapter yet "
                             "(train it first)")
    config = read_json(adapter / "adapter_config.json", "adapter config", "train the run again")
    notes = check_vllm_limits(config, adapter)
    if cfg.method.name == "qlora":
        notes.append("trained as QLoRA on a 4-bit base: vLLM applies the adapter to the bf16 base, which can "
                     "answer slightly differently from the base it was trained on")
    model, base_note, local = vllm_base(_base_name(adapter, cfg.model.source), run)
    if base_note:
        notes.insert(0, base_note)
    return Served(name, model, adapter.resolve(), max_lora_rank(int(config["r"])), max_model_len, cfg.model.source,
                  notes, local_model=local)


def _base_name(adapter: Path, fallback: str) -> str:
    from tunesmith.models.card import find_base

    try:
        return find_base(adapter)
    except FileNotFoundError:
        return fallback


def check_vllm_limits(config: dict[str, Any], where: Path) -> list[str]:
    """Refuse (TunesmithError) an adapter vLLM will not load, naming the reason; notes for what
    it may not load, depending on its version."""
    fix = (f"serve the merged model instead: `tunesmith export {where.parent} --out FOLDER`, then "
           "`vllm serve FOLDER` (no adapter flags)")
    r = config.get("r")
    if not isinstance(r, int) or r < 1:
        raise TunesmithError(f"{where}/adapter_config.json: r = {r!r} is not a LoRA rank; train the run again")
    if r > VLLM_MAX_LORA_RANKS[-1]:
        raise TunesmithError(f"{where}: adapter rank r={r} is beyond vLLM's largest --max-lora-rank "
                             f"({VLLM_MAX_LORA_RANKS[-1]}); retrain with method.r <= {VLLM_MAX_LORA_RANKS[-1]}, or {fix}")
    if config.get("use_dora"):
        raise TunesmithError(f"{where}: a DoRA adapter (use_dora): vLLM does not load DoRA; {fix}")
    if config.get("modules_to_save"):
        saved = ", ".join(config["modules_to_save"])
        raise TunesmithError(f"{where}: the adapter saves whole modules ({saved}, modules_to_save): vLLM only loads "
                             f"adapters without them; {fix}")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        what = f"bias={config.get('bias')!r}" if config.get("bias", "none") != "none" else "lora_bias"
        raise TunesmithError(f"{where}: the adapter trains bias terms ({what}): vLLM loads LoRA weights only; {fix}")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    on_vocab = [t for t in targets if any(t == m or t.endswith("." + m) for m in VOCAB_MODULES)]
    notes = []
    if on_vocab:
        notes.append(f"LoRA on {', '.join(on_vocab)}: not every vLLM version loads adapters on the embeddings or "
                     f"lm_head; if vLLM refuses the adapter, {fix}")
    return notes


def max_lora_rank(r: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds rank r (r=4 -> 8, r=16 -> 16)."""
    return next(v for v in VLLM_MAX_LORA_RANKS if v >= r)


def vllm_base(base: str, run: Path) -> tuple[str, str, bool]:
    """(what vLLM loads, a note, whether it is a local folder) for the base as the user named it:
    a hub id as it is, a catalog alias as its hub id, a model folder as its absolute path, and a
    GGUF file (or a built-in alias, which is one) as the folder tunesmith converted it to: the
    weights the adapter was trained on, which the hub's copy need not be."""
    from tunesmith.models.aliases import ALIASES, find_alias
    from tunesmith.models.source import is_hub_id, resolve_source

    export = (f"`tunesmith export {run} --out FOLDER` writes the merged model as a folder vLLM serves "
              "(`vllm serve FOLDER`)")
    alias = find_alias(base)
    if base in ALIASES or base.lower().endswith(".gguf"):
        folder = Path(resolve_source(base)).resolve()
        return str(folder), (f"base {base}: a GGUF file, served from the folder tunesmith converted it to "
                             f"({folder}: the weights the adapter was trained on)"), True
    if alias is not None and alias.hub_id:
        return alias.hub_id, f"base {base}: the tunesmith alias of {alias.hub_id}, which vLLM loads", False
    folder = Path(base).expanduser()
    if folder.is_dir():
        return str(folder.resolve()), f"base {base}: a folder on this machine", True
    if is_hub_id(base) and not base.startswith((".", "/", "~")):
        return base, "", False
    raise TunesmithError(f"base {base}: neither a hub id nor a model folder here; vLLM needs one of them: {export}")


# ---------------------------------------------------------------- vllm serve

def vllm_args(served: Served, *, model: str | None = None, adapter: str | None = None,
              host: str = "127.0.0.1", port: int = PORT) -> list[str]:
    """`vllm serve` and its arguments; `model`/`adapter` override the paths (SkyPilot's mounts)."""
    args = ["vllm", "serve", model or served.model]
    if served.adapter is None:
        args += ["--served-model-name", served.name]
    else:
        args += ["--enable-lora", "--lora-modules", f"{served.name}={adapter or served.adapter}",
                 "--max-lora-rank", str(served.max_lora_rank)]
    return args + ["--max-model-len", str(served.max_model_len), "--host", host, "--port", str(port)]


def command_line(args: list[str]) -> str:
    """The arguments as one shell line, with the API key read from the environment."""
    return " ".join(shlex.quote(a) for a in args) + f" --api-key {API_KEY_ARG}"


def client_example(served: Served, url: str) -> str:
    """A curl call to the served model (the key from the environment, as the server reads it)."""
    body = ('{"model": "' + served.name + '", "messages": [{"role": "user", "content": "Hello"}], '
            '"max_tokens": 64}')
    return (f"curl {url}/v1/chat/completions -H \"Authorization: Bearer ${API_KEY_ENV}\" "
            f"-H 'Content-Type: application/json' -d '{body}'")


# ---------------------------------------------------------------- SkyPilot service

def pick_gpu(served: Served, *, gpu: str | None, context: int, concurrency: int) -> dict[str, Any]:
    """The plan --inference row of the GPU to serve on: `gpu` if given (it must fit), else the
    cheapest priced catalog GPU that holds the weights and `concurrency` sequences of `context`."""
    from tunesmith.catalog.gpu import load_gpus
    from tunesmith.catalog.prices import load_prices, resolve_gpu
    from tunesmith.models.facts import model_facts
    from tunesmith.plan.serving import serving_plan

    # The base as the user named it (an alias is in the catalog; its hub id may not be cached here).
    facts, _ = model_facts(served.model if served.local_model else served.base)
    plan = serving_plan(facts, load_gpus(), load_prices(), context=context, concurrency=concurrency,
                        tokens_per_s=None)
    if gpu is not None:
        name = resolve_gpu(gpu)
        row = next(o for o in plan["options"] if o["gpu"] == name)
        if not row["fits"]:
            raise UsageError(f"--gpu {gpu}: serving needs {row['needed_gb']:g} GB for {concurrency} sequences of "
                             f"{context:,} tokens; {name} gives vLLM {row['usable_gb']:g} GB: lower --concurrency "
                             "or --context, or pick a larger GPU (`tunesmith plan --model BASE --inference`)")
        if name not in SKY_ACCELERATORS:
            raise UsageError(f"--gpu {gpu}: SkyPilot has no single accelerator name for {name}; pick another")
        return row
    # options come cheapest first among those that fit (plan.serving)
    row = next((o for o in plan["options"] if o["fits"] and o["usd_per_hour"] and o["gpu"] in SKY_ACCELERATORS), None)
    if row is None:
        raise TunesmithError(f"no single catalog GPU with a price holds {concurrency} sequences of {context:,} "
                             "tokens of this model: lower --concurrency or --context, or name one with --gpu")
    return row


def service_config(served: Served, row: dict[str, Any], *, port: int = PORT, replicas: int = 1) -> dict[str, Any]:
    """A SkyPilot service (`sky serve up`): vLLM with the adapter on one GPU of `row`, the
    run's files uploaded, the API key a secret given at launch (never in the file)."""
    mounts: dict[str, str] = {}
    model = served.model
    if served.local_model:
        model = f"{REMOTE_ROOT}/model"
        mounts[model] = served.model
    adapter = None
    if served.adapter is not None:
        adapter = f"{REMOTE_ROOT}/adapter"
        mounts[adapter] = str(served.adapter)
    # 0.0.0.0 on the replica: SkyPilot's load balancer and readiness probe reach it over the
    # network; every /v1 route still needs the key. /health needs none, so the probe works.
    run = command_line(vllm_args(served, model=model, adapter=adapter, host="0.0.0.0", port=port))
    return {
        "name": sky_name(served.name),
        "service": {"readiness_probe": {"path": "/health", "initial_delay_seconds": 1200}, "replicas": replicas},
        "resources": {"accelerators": f"{SKY_ACCELERATORS[row['gpu']]}:1", "ports": port},
        "secrets": {API_KEY_ENV: None},
        "file_mounts": mounts,
        "setup": "pip install vllm\n",
        "run": run + "\n",
    }


def service_yaml(served: Served, row: dict[str, Any], config: dict[str, Any], run: Path, out: Path) -> str:
    """The service YAML with a header that says what it serves, on what, and how to start it."""
    price = row.get("usd_per_hour")
    cost = f", ${price[0]:.2f}-{price[1]:.2f}/hour on demand" if price and price[0] != price[1] else (
        f", ${price[0]:.2f}/hour on demand" if price else "")
    header = [
        f"# tunesmith deploy {run} --target sky",
        f"# Serves {served.name} with vLLM on 1 x {row['gpu']} ({row['memory_gb']:g} GB{cost}): it needs "
        f"{row['needed_gb']:g} GB and holds {row['max_sequences']:,} sequences of {served.max_model_len:,} tokens.",
        "# The API key is a secret given at launch, never written here:",
        f"#   export {API_KEY_ENV}=...   # any long random string; clients send it as a Bearer token",
        f"#   sky serve up {out} -n {config['name']} --secret {API_KEY_ENV}",
    ]
    body = block_yaml(config)
    return "\n".join(header) + "\n" + body
