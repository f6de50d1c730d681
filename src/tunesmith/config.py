"""The run config: one YAML file, validated by pydantic, defaults from the guide.

Every field is documented once, here; `tunesmith config show` prints the resolved config
with every default written out, and a wrong field gets one line naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunesmith.errors import UsageError

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    source: str = Field(
        "smollm2-135m-instruct",
        description="hub id, local folder, .gguf file, or a built-in alias",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on a GPU that supports it, float32 on CPU"
    )
    trust_remote_code: bool = Field(False, description="run code shipped with the model (off: safer)")


class DataConfig(Section):
    train: str | None = Field(None, description="training file (JSONL)")
    val: str | None = Field(None, description="validation file; none: hold out val_fraction of train")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share held out when there is no val file")
    max_val_examples: int = Field(200, ge=1, description="cap on held-out rows (eval generates for each)")
    train_on_inputs: bool = Field(False, description="also train on prompt tokens, not only responses")


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
    pii_ner: bool = Field(False, description="also find names and addresses with Presidio (optional extra `ner`, ~100 rows/s)")
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
    lr: float | None = Field(None, gt=0, description="peak learning rate; default 2e-4 (LoRA), 2e-5 (full)")
    epochs: float = Field(1.0, gt=0, description="passes over the training set (fractions allowed)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    micro_batch: int = Field(4, ge=1, description="sequences per forward pass")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_seq_len: int = Field(512, ge=16, description="tokens per packed sequence; longer examples are removed")
    packing: bool = Field(True, description="pack several examples per sequence (no attention between them)")
    gradient_checkpointing: bool = Field(False, description="recompute activations: less memory, ~30% slower")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of steps spent warming up")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="lr schedule after warmup")
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit"] = Field(
        "adamw", description="8bit: 2 B of state per trained parameter instead of 8 (bitsandbytes, GPU); "
        "paged: state in memory the driver can move to the host instead of running out"
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping")
    seed: int = Field(42, description="one seed for split, shuffle, init and dropout")
    eval_every: int = Field(50, ge=1, description="optimizer steps between validation-loss passes")
    save_every: int = Field(200, ge=1, description="optimizer steps between checkpoints")
    log_every: int = Field(1, ge=1, description="optimizer steps between metrics.jsonl lines")


class EvalConfig(Section):
    max_new_tokens: int = Field(128, ge=1, description="generation cap (lowered to fit the longest reference)")
    batch_size: int = Field(32, ge=1, description="prompts generated together (decoding is memory-bound: larger is cheaper per prompt)")
    max_examples: int | None = Field(None, ge=1, description="evaluate only the first N validation rows")


class OutputConfig(Section):
    dir: str = Field("runs/latest", description="the run folder")


class RunConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
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


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["train.lr=1e-4", "method=qlora"]` -> nested dict; values are read as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {pair!r}: expected section.key=value, e.g. --set train.lr=1e-4")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"--set {pair!r}: {part} is set twice, once as a value")
        node[parts[-1]] = _yaml_scalar(raw)
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


def build_config(raw: dict[str, Any], overrides: list[str] | None = None, where: str = "config") -> RunConfig:
    data = deep_merge(raw, parse_overrides(overrides or []))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise UsageError(describe_validation_error(e, where)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: config file not found (write one like configs/demo.yaml)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise UsageError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected a mapping with sections model, data, clean, method, train, eval, output")
    return build_config(raw, overrides, where=str(path))


def describe_validation_error(e: ValidationError, where: str) -> str:
    """One line for the first problem: the field, the bad value, what is allowed."""
    err = e.errors()[0]
    field = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    value = err.get("input")
    kind = err["type"]
    if kind == "extra_forbidden":
        section, _, name = field.rpartition(".")
        model = _section_model(section)
        allowed = ", ".join(model.model_fields) if model else "?"
        return f"{where}: unknown field {field!r}; allowed{' in ' + section if section else ''}: {allowed}"
    if kind == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        return f"{where}: {field} = {value!r} is not allowed; choose one of {allowed}"
    return f"{where}: {field} = {value!r}: {err['msg'].lower()}"


def _section_model(section: str) -> type[BaseModel] | None:
    if not section:
        return RunConfig
    field = RunConfig.model_fields.get(section.split(".")[0])
    return field.annotation if field is not None else None  # type: ignore[return-value]
