"""The run config: one YAML file, validated by pydantic, defaults from the guide.

Every field is documented once, here; `tunesmith config show` prints the resolved config
with every default written out, and a wrong field gets one line naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunesmith.errors import UsageError
from tunesmith.io import read_utf8

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# The clean stage's finding codes and PII types. They live here, in the shared layer, so a
# config naming an unknown one is refused when it is read (`config show` too), not when data
# is cleaned; the data stage imports them from here.
REMOVE_BY_DEFAULT = frozenset({
    "mojibake", "control_chars", "trivial_response", "echo", "duplicate", "near_duplicate",
    "semantic_duplicate", "too_long", "no_trained_tokens", "over_balance_cap",
})
WARN_BY_DEFAULT = frozenset({"bom", "odd_whitespace", "truncated", "refusal"})
ROW_CODES = REMOVE_BY_DEFAULT | WARN_BY_DEFAULT
PII_TYPES: tuple[str, ...] = ("EMAIL", "PHONE", "CARD", "IBAN", "IP", "SSN", "API_KEY", "URL_CREDENTIALS")
NER_TYPES: tuple[str, ...] = ("PERSON", "LOCATION")


class Section(BaseModel):
    # inf and nan are never a setting: `lr: .inf` or `epochs: 1e400` (which YAML reads as inf)
    # would validate against gt=0 and wreck a run hours later.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(Section):
    source: str = Field(
        "smollm2-135m-instruct",
        description="hub id, local folder, .gguf file, or a built-in alias",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on a GPU that supports it, float32 on CPU (bfloat16 there is "
                            "faster where the CPU has native bf16; float16 needs a GPU)"
    )
    trust_remote_code: bool = Field(False, description="run code shipped with the model (off: safer)")


class DataConfig(Section):
    train: str | None = Field(None, description="training file (JSONL)")
    val: str | None = Field(None, description="validation file; none: hold out val_fraction of train")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share held out when there is no val file")
    max_val_examples: int = Field(200, ge=1, description="cap on held-out rows (eval generates for each)")
    train_on_inputs: bool = Field(False, description="also train on prompt tokens, not only responses")
    mix_general: float = Field(
        0.0, ge=0, lt=0.5, description="share of the training set made of general instruction rows shipped with "
        "tunesmith (0.1: one row in ten), against forgetting general skills; added to training only, never to "
        "validation; 0: none"
    )


TASK_TYPES = ("task", "conversational", "domain", "pretraining")


class CleanConfig(Section):
    """What `tunesmith data clean` (and `train`, before it trains) does to each row."""

    fix_encoding: bool = Field(
        False, description="repair mojibake, control characters and odd whitespace (each fix recorded); "
        "off: rows with mojibake or control characters are removed"
    )
    pii: Literal["redact", "report", "drop"] = Field(
        "redact", description="redact: typed placeholders like <EMAIL>; report: count only; drop: remove the row"
    )
    pii_types: list[str] | None = Field(None, description="PII types to look for; none: all built-in types, plus PERSON and LOCATION with pii_ner")
    pii_ner: bool = Field(False, validate_default=True, description="also find names and addresses with Presidio (optional extra `ner`, ~100 rows/s)")
    dedup: bool = Field(True, description="remove exact and near-duplicate rows, keeping the first of each cluster")
    near_dup_threshold: float = Field(0.7, gt=0, le=1, description="word-shingle Jaccard at which two rows are near-duplicates")
    shingle_size: int = Field(3, ge=1, le=10, description="words per shingle for near-duplicates")
    semantic_dedup: bool = Field(False, description="also remove paraphrases by sentence embeddings (optional extra)")
    semantic_threshold: float = Field(0.95, gt=0, le=1, description="cosine similarity for semantic duplicates")
    drop: list[str] = Field(default_factory=list, description="warning codes that should remove the row instead (e.g. refusal, truncated)")
    keep: list[str] = Field(default_factory=list, description="removal codes that should only warn instead (e.g. near_duplicate)")
    balance_cap: int | None = Field(None, ge=1, description="keep at most N rows per category (seeded choice)")
    max_invalid_fraction: float = Field(
        0.1, ge=0, le=1, description="share of unreadable rows above which the file is refused (a wrong mapping, not a few bad lines)"
    )
    task_type: Literal["task", "conversational", "domain", "pretraining"] | None = Field(
        None, description="what the tuning is for; sets the volume guidance in the report"
    )

    @field_validator("drop", "keep")
    @classmethod
    def _known_codes(cls, codes: list[str]) -> list[str]:
        if "pii" in codes:
            raise ValueError("PII is set with clean.pii (redact, report or drop), not clean.drop/keep")
        unknown = sorted(set(codes) - ROW_CODES)
        if unknown:
            raise ValueError(f"unknown code {unknown[0]!r}; allowed: {', '.join(sorted(ROW_CODES))}")
        return codes

    @field_validator("pii_types")
    @classmethod
    def _known_pii_types(cls, types: list[str] | None) -> list[str] | None:
        unknown = sorted(set(types or ()) - set(PII_TYPES + NER_TYPES))
        if unknown:
            raise ValueError(f"unknown type {unknown[0]!r}; allowed: {', '.join(PII_TYPES + NER_TYPES)}")
        return types

    @field_validator("pii_ner")
    @classmethod
    def _ner_types_need_ner(cls, pii_ner: bool, info: Any) -> bool:
        # pii_types is declared first, so it is already validated here
        if not pii_ner and set(info.data.get("pii_types") or ()) & set(NER_TYPES):
            raise ValueError("PERSON and LOCATION in clean.pii_types need clean.pii_ner: true (--pii-ner)")
        return pii_ner


class MethodConfig(Section):
    name: Literal["lora", "qlora", "full"] = Field("lora", description="qlora: LoRA on a 4-bit base (GPU)")
    r: int = Field(16, ge=1, description="LoRA rank: higher fits more, costs memory")
    alpha: int | None = Field(None, ge=1, description="LoRA alpha; default 2 x r")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LINEAR), description="layers that get adapters")

    @model_validator(mode="after")
    def _alpha_defaults_to_twice_r(self) -> "MethodConfig":
        if self.alpha is None:
            object.__setattr__(self, "alpha", 2 * self.r)
        return self


class TrainConfig(Section):
    lr: float | None = Field(None, gt=0, lt=1, description="peak learning rate; default 2e-4 (LoRA), 2e-5 (full)")
    epochs: Annotated[float, Field(gt=0, le=1000)] | Literal["auto"] = Field(
        "auto", union_mode="left_to_right",
        description="passes over the training set (fractions allowed); auto: 3 under 500k training tokens per "
                    "epoch, 2 under 5M, else 1 (early stopping ends it sooner when eval loss turns)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    micro_batch: int = Field(4, ge=1, description="sequences per forward pass")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_seq_len: int = Field(512, ge=16, le=1_048_576, description="tokens per packed sequence; longer examples are removed")
    packing: bool = Field(True, description="pack several examples per sequence (no attention between them)")
    gradient_checkpointing: bool = Field(False, description="recompute activations: less memory, ~30% slower")
    auto_fit: bool = Field(True, description="when the pre-flight predicts the run does not fit this device, "
                           "train with the cheapest change that fits (gradient checkpointing, then a smaller "
                           "micro-batch with more accumulation: the same update, then on a GPU "
                           "train.offload_activations); false: refuse instead")
    release_freed_memory: bool = Field(
        False, description="on a CPU: malloc hands freed activation blocks back to the kernel at once (fixed "
        "mmap threshold): peak resident memory ~1.05x what torch allocated instead of up to ~1.7x, but steps "
        "~65% slower (page faults); auto-fit turns it on when nothing cheaper fits")
    offload_activations: bool = Field(
        False, description="with gradient checkpointing, keep each layer's saved input in host memory until its "
        "backward (pinned; a copy each way per layer: slower); frees layers x tokens x hidden of GPU memory, "
        "nothing on a CPU")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of steps spent warming up")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="lr schedule after warmup")
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit"] = Field(
        "adamw", description="8bit: 2 B of state per trained parameter instead of 8 (bitsandbytes, GPU); "
        "paged: state in memory the driver can move to the host instead of running out"
    )
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping")
    seed: int = Field(42, description="one seed for split, shuffle, init and dropout")
    eval_every: int = Field(50, ge=1, description="optimizer steps between validation-loss passes")
    save_every: int = Field(200, ge=1, description="optimizer steps between checkpoints")
    log_every: int = Field(1, ge=1, description="optimizer steps between metrics.jsonl lines")
    keep_checkpoints: int = Field(3, ge=1, description="newest checkpoints kept (the best by eval loss is kept too)")
    early_stopping_patience: int = Field(
        3, ge=0, description="stop after this many evaluations without a better eval loss; 0: never stop early"
    )
    early_stopping_min_delta: float = Field(0.0, ge=0, description="how much lower eval loss must be to count as better")
    watch_preemption: Literal["off", "auto", "aws", "gcp"] = Field(
        "off", description="poll the cloud's metadata for a spot preemption notice and checkpoint at once"
    )

    @field_validator("offload_activations")
    @classmethod
    def _offload_needs_checkpointing(cls, offload: bool, info: Any) -> bool:
        # gradient_checkpointing is declared first, so it is already validated here
        if offload and not info.data.get("gradient_checkpointing"):
            raise ValueError("needs train.gradient_checkpointing: true (it moves the layer inputs that "
                             "checkpointing keeps); add --set train.gradient_checkpointing=true")
        return offload


class DistributedConfig(Section):
    """How several processes (`tunesmith train --nproc N`) share the work; one process ignores it."""

    strategy: Literal["auto", "ddp", "fsdp", "fsdp_offload", "zero2", "zero3"] = Field(
        "auto", description="ddp: a whole replica per process; fsdp: weights, gradients and optimizer state "
        "sharded (FSDP2); fsdp_offload: sharded and kept in host memory (GPUs); zero2/zero3: DeepSpeed, priced "
        "by `plan` only, refused by train; auto: DDP when a replica fits each process, else FSDP (QLoRA: DDP)")


class EvalConfig(Section):
    max_new_tokens: int = Field(128, ge=1, description="generation cap (lowered to fit the longest reference)")
    batch_size: int = Field(32, ge=1, description="prompts generated together (decoding is memory-bound: larger is cheaper per prompt)")
    max_examples: int | None = Field(None, ge=1, description="evaluate only the first N examples")
    general: bool = Field(True, description="also score the shipped general set (facts, arithmetic, formats) "
                          "on base and tuned, to catch forgetting (~120 short answers per model)")
    forgetting_threshold: float = Field(0.05, ge=0, le=1, description="drop in the general set's pass rate "
                                        "(tuned vs base) above which forgetting is flagged")


class TrackConfig(Section):
    """Where the metrics.jsonl curves also go, under the same names at the same steps."""

    to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list, description="trackers to log to (optional extra `track`); empty: none, "
        "only metrics.jsonl"
    )
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking URI; none: a SQLite store in the run folder (RUN/mlflow.db)"
    )
    experiment: str | None = Field(None, description="MLflow experiment; none: the run folder's name")
    wandb_project: str | None = Field(
        None, description="W&B project; none: WANDB_PROJECT, else tunesmith"
    )


class OutputConfig(Section):
    dir: str = Field("runs/latest", description="the run folder")


class RunConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    track: TrackConfig = Field(default_factory=TrackConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("method", mode="before")
    @classmethod
    def _method_shorthand(cls, v: Any) -> Any:
        # `method: qlora` is shorthand for `method: {name: qlora}`.
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _lr_defaults_by_method(self) -> "RunConfig":
        if self.train.lr is None:
            object.__setattr__(self.train, "lr", 2e-5 if self.method.name == "full" else 2e-4)
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# Passes over the data when train.epochs is auto: the guide's 1-3, more for small sets. Measured
# on a real task (351 training rows, ~50k tokens, SmolLM2): 1 epoch 0.63 exact match, 3 epochs
# 0.85 with the validation loss still falling; large sets reach the plateau within a pass and
# each extra one costs GPU-hours. Early stopping and the best checkpoint keep a pass too many
# from hurting. Counted in tokens, so `plan --tokens N` knows what train will do.
AUTO_EPOCHS = ((500_000, 3.0), (5_000_000, 2.0))


def resolve_epochs(epochs: float | str, tokens_per_epoch: int | None) -> tuple[float, str]:
    """(passes, why) for train.epochs; `tokens_per_epoch` None: not counted (the most auto picks)."""
    if epochs != "auto":
        return float(epochs), "train.epochs"
    if tokens_per_epoch is None:
        return AUTO_EPOCHS[0][1], "train.epochs auto: at most 3 (the token count decides)"
    for below, passes in AUTO_EPOCHS:
        if tokens_per_epoch < below:
            return passes, (f"train.epochs auto: {passes:g} for {tokens_per_epoch:,} training tokens per epoch "
                            f"(under {below:,})")
    return 1.0, (f"train.epochs auto: 1 for {tokens_per_epoch:,} training tokens per epoch "
                 f"({AUTO_EPOCHS[-1][0]:,} or more)")


def flat_fields(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 2e-4}}` as `{"train.lr": 2e-4}` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flat_fields(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ---------------------------------------------------------------- reading a config

FieldPath = tuple[str, ...]  # a field's place: ("train", "lr")


@dataclass(frozen=True)
class Override:
    """One field set on the command line, and how to name it in a message: `--set
    train.lr=1e-4`, or the flag that set it (`--epochs 3`)."""

    path: FieldPath
    raw: str
    label: str


def parse_overrides(pairs: list[str], flags: dict[str, str] | None = None) -> dict[str, Any]:
    """`["train.lr=1e-4", "method=qlora"]` -> nested dict; values are read as YAML scalars."""
    return _nest(read_overrides(pairs, flags))


def read_overrides(pairs: list[str], flags: dict[str, str] | None = None) -> list[Override]:
    """Each `section.key=value`. `flags` maps a field to the CLI flag that set it, so a bad
    value is blamed on `--epochs`, not on a `--set` the user never typed: the commands put
    their flags' pairs first, so a field's first pair is its flag's and a later one a --set."""
    found = []
    unclaimed = dict(flags or {})
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise UsageError(f"--set {pair!r}: expected section.key=value, e.g. --set train.lr=1e-4")
        flag = unclaimed.pop(key, None)
        label = f"{flag} {_as_typed(raw)}" if flag else f"--set {key}={raw}"
        if not raw.strip():
            raise UsageError(f"{label}: no value given; write the value, or null to use the default")
        found.append(Override(tuple(key.split(".")), raw, label))
    return found


def _as_typed(raw: str) -> str:
    """A flag's value as the user typed it: the CLI quotes text flags as JSON strings."""
    if raw.startswith('"') and raw.endswith('"'):
        try:
            return str(json.loads(raw))
        except ValueError:
            return raw
    return raw


def _nest(overrides: list[Override]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for o in overrides:
        node = out
        for part in o.path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"{o.label}: {part} is set twice, once as a value")
        node[o.path[-1]] = _yaml_scalar(o.raw)
    return out


def _yaml_scalar(raw: str) -> Any:
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    # YAML 1.1 reads "1e-4" as a string; users mean a number.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            return value
    return value


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(raw: dict[str, Any], overrides: list[str] | None = None, where: str = "config", *,
                 flags: dict[str, str] | None = None, lines: dict[FieldPath, int] | None = None) -> RunConfig:
    """Validate a config (from a file, or {} for the defaults) with the command line on top.
    A wrong field is one line blamed on what set it: the flag, the `--set`, or
    `FILE:LINE` (`lines`: where each field of the file is)."""
    given = read_overrides(overrides or [], flags)
    data = deep_merge(raw, _nest(given))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise UsageError(describe_validation_error(e, where, given, lines or {})) from None


def load_run_config(run_dir: Path, overrides: list[str] | None = None, flag: str = "RUN") -> RunConfig:
    """The resolved config a run folder holds (RUN/config.yaml, written by `tunesmith train`)."""
    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file():
        raise UsageError(f"{flag} {run_dir} is not a run folder (no config.yaml); train into it first")
    return load_config(config_path, overrides)


def load_config(path: str | Path, overrides: list[str] | None = None, *,
                flags: dict[str, str] | None = None) -> RunConfig:
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise UsageError(f"{path}: config file not found; `tunesmith config show > {path.name}` writes one "
                         f"with every field and its default")
    text = read_utf8(path, "config file", "save the file as UTF-8", column=True)
    raw, lines = parse_yaml(text, path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected a mapping with sections {', '.join(RunConfig.model_fields)}; "
                         f"found {_kind(raw)}")
    return build_config(raw, overrides, where=str(path), flags=flags, lines=lines)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: PyYAML keeps the last one
    silently, so `lr: 1e-4` ten lines above `lr: 1e-3` would be ignored without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise _DuplicateKey(key, line, seen[key])
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int) -> None:
        self.key, self.line, self.first = key, line, first


def parse_yaml(text: str, path: Path) -> tuple[Any, dict[FieldPath, int]]:
    """The document, and the line of every mapping key by its path (for messages)."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except _DuplicateKey as d:
        raise UsageError(f"{path}:{d.line}: key {d.key!r} is given twice (first on line {d.first}); "
                         f"keep one") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise UsageError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    finally:
        loader.dispose()
    lines: dict[FieldPath, int] = {}
    _key_lines(node, (), lines)
    return data, lines


def _key_lines(node: Any, prefix: FieldPath, lines: dict[FieldPath, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            place = (*prefix, str(key_node.value))
            lines[place] = key_node.start_mark.line + 1
            _key_lines(value_node, place, lines)


# ---------------------------------------------------------------- messages

# pydantic's wording for a wrong type names Python types ("NoneType", "instance of
# TrainConfig"); a user wrote YAML, so say it in YAML's words.
TYPE_PROBLEMS = {
    "int_parsing": "expected a whole number", "int_type": "expected a whole number",
    "int_from_float": "expected a whole number", "float_parsing": "expected a number",
    "float_type": "expected a number", "finite_number": "expected a finite number (not inf or nan)",
    "bool_parsing": "expected true or false", "bool_type": "expected true or false",
    "string_type": "expected text", "list_type": "expected a list, e.g. [a, b]",
    "dict_type": "expected a section of fields (name: value)",
    "model_type": "expected a section of fields (name: value)",
    "model_attributes_type": "expected a section of fields (name: value)",
}


def describe_validation_error(e: ValidationError, where: str, given: list[Override] | None = None,
                              lines: dict[FieldPath, int] | None = None) -> str:
    """One line for the first problem: who set it (flag, --set, or FILE:LINE), the field, the
    value as written, and what is allowed."""
    err = e.errors()[0]
    loc = _field_loc(tuple(str(p) for p in err["loc"] if not str(p).startswith("function-")))
    field = ".".join(loc)
    problem = _problem(err, loc)
    culprit = _culprit(loc, given or [])
    if culprit is not None:
        # `--set train.lr=inf` names field and value already; a flag (`--epochs inf`) or a
        # whole section (`--set method=dora`) does not name the field that failed.
        names_field = culprit.label.startswith("--set ") and culprit.path == loc
        return f"{culprit.label}: {problem}" if names_field or err["type"] == "extra_forbidden" \
            else f"{culprit.label}: {field}: {problem}"
    place = _file_place(where, loc, lines or {})
    if err["type"] == "extra_forbidden":
        return f"{place}: {problem}"
    return f"{place}: {field} = {_yaml_text(err.get('input'))}: {problem}"


def _problem(err: Any, loc: FieldPath) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        section = ".".join(loc[:-1])
        model = _section_model(section)
        allowed = ", ".join(model.model_fields) if model else "?"
        return f"unknown field {'.'.join(loc)!r}; allowed{' in ' + section if section else ''}: {allowed}"
    if kind == "literal_error":
        return f"not allowed; choose one of {err.get('ctx', {}).get('expected', '')}"
    if kind in TYPE_PROBLEMS:
        model = _section_model(".".join(loc)) if kind.startswith(("dict", "model")) else None
        return TYPE_PROBLEMS[kind] + (f": {', '.join(model.model_fields)}" if model is not None else "")
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    return str(err["msg"]).lower().replace("input should be", "must be")


def _culprit(loc: FieldPath, given: list[Override]) -> Override | None:
    """The command-line override that set this field, or a section holding it (last wins,
    as in the merge)."""
    for o in reversed(given):
        if loc[: len(o.path)] == o.path or o.path[: len(loc)] == loc:
            return o
    return None


def _file_place(where: str, loc: FieldPath, lines: dict[FieldPath, int]) -> str:
    for depth in range(len(loc), 0, -1):
        if loc[:depth] in lines:
            return f"{where}:{lines[loc[:depth]]}"
    return where


def _yaml_text(value: Any) -> str:
    """A value as the user would have written it in YAML (null, true, 'text')."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return yaml.safe_dump(value).strip().removesuffix("...").strip()


def _kind(value: Any) -> str:
    return {list: "a list", str: "text", int: "a number", float: "a number", bool: "true/false"}.get(
        type(value), "a value")


def _field_loc(loc: FieldPath) -> FieldPath:
    """A field's place without the union member pydantic appends (`train.epochs.float`)."""
    if len(loc) == 3 and _section_model(loc[0]) is not None and not loc[2].isdigit():  # not a list index
        return loc[:2]
    return loc


def _section_model(section: str) -> type[BaseModel] | None:
    if not section:
        return RunConfig
    field = RunConfig.model_fields.get(section.split(".")[0])
    return field.annotation if field is not None and "." not in section else None  # type: ignore[return-value]
