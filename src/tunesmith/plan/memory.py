"""Peak memory of a training step, tensor by tensor, for tunesmith's own training loop.

The model follows what the loop really keeps alive, not a rule of thumb:

- **Weights.** LoRA: the base in bf16 on a GPU (the config's dtype on CPU). QLoRA: the
  decoder's linear layers in NF4, 4 bits plus one fp32 absmax per 64 weights (4.5 bits), or
  4.127 bits with double quantisation (the absmax in 8 bits, QLoRA paper); everything else
  (embeddings, head, norms) stays in the base's dtype (train/lean.py, not peft's fp32 upcast).
  Full: fp32 master weights, with bf16 autocast on a GPU, whose cached bf16 copies of
  the weights live until backward has used them (2 bytes per parameter).
- **Adapters.** peft keeps LoRA weights in fp32 even on a bf16 base (`autocast_adapter_dtype`);
  tunesmith multiplies them in the base's dtype (train/lean.py), so an adapted layer keeps its
  input as it is (peft would keep an fp32 copy per adapter) and a bf16 copy of the adapter's
  weights (r x (in + out), per layer).
- **Optimizer.** AdamW: m and v in fp32 (8 B/param), plus one parameter-sized temporary in
  `step()` (torch's foreach `_foreach_sqrt`). 8-bit AdamW: 2 B/param plus an fp32 absmax per
  2,048 values; tensors under 4,096 values stay 32-bit (bitsandbytes `min_8bit_size`).
  Paged variants hold the same bytes in managed memory the driver may evict to the host.
- **Activations.** Per decoder layer, per token, each tensor autograd saves: the fp32 copies
  RMSNorm makes, the inputs adapted layers keep (shared; with dropout one per adapter plus
  its mask), q/k/v/out and the fp32 logsumexp of SDPA/flash attention (no s x s matrix), the
  SwiGLU gate, activation and up projection. With gradient checkpointing only each layer's
  input stays, plus one layer recomputed during backward; `train.offload_activations` moves
  those inputs to host memory (on a GPU).
- **Logits.** The loss runs the head only on trained positions, a chunk of them at a time
  (train/loss.py), computing each chunk's gradients in the forward pass: it keeps the
  gradient of each trained position's hidden state (and of the head's weight when it trains),
  and only one chunk's fp32 logits and their temporaries exist at once.

- **The CPU process.** The kernel kills by resident set, not by what torch's allocator
  handed out: peak RSS = allocated x (1 + slack) + the interpreter and libraries, with both
  measured by `bench/cpu_resident_peak.py` (catalog/cpu_memory.json), plus the data held.

`tests/test_plan_memory.py` measures every activation and peak on CPU against real models;
`bench/gpu_memory_check.py` does the same on a GPU.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Literal

from tunesmith.errors import UsageError
from tunesmith.models.arch import GEMMA_FAMILIES, LOSS_CHUNK_BYTES, ModelFacts, count_params

GB = 1e9
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit")
STRATEGIES = ("ddp", "zero2", "zero3", "fsdp", "fsdp_offload")

# pytorch#107667: ~300 MB with lazy module loading (CUDA >= 11.7); cuBLAS and NCCL handles
# add more. The GPU bench measures it; this is the default until then.
CUDA_CONTEXT_BYTES = 0.5 * 2**30
# Reserved over allocated: the caching allocator rounds blocks and keeps split blocks. No
# published typical figure; this is a guess for the GPU bench to replace.
ALLOCATOR_OVERHEAD = 0.05


@dataclass(frozen=True)
class CpuResident:
    """What a CPU training process holds beyond the tensors the allocator hands out, measured
    by bench/cpu_resident_peak.py (catalog/cpu_memory.json has the command and the date)."""

    slack: float  # peak RSS above the process baseline, over the allocator's peak, minus 1
    slack_released: float  # the same with train.release_freed_memory (freed blocks go back at once)
    process_bytes: float  # the interpreter and libraries: RSS after importing torch, transformers, peft
    example_bytes_per_token: float  # the cleaned examples, kept as Python lists
    packed_bytes_per_token: float  # the packed rows, per epoch (the loop plans every step up front)
    source: str
    as_of: str


@lru_cache(maxsize=1)
def cpu_resident() -> CpuResident:
    entry = json.loads((resources.files("tunesmith.catalog") / "cpu_memory.json").read_text(encoding="utf-8"))
    r = entry["resident"]
    return CpuResident(slack=r["slack"], slack_released=r["slack_released"], process_bytes=r["process_gb"] * GB,
                       example_bytes_per_token=r["example_bytes_per_token"],
                       packed_bytes_per_token=r["packed_bytes_per_token_per_epoch"],
                       source=entry["source"], as_of=entry["as_of"])


def cpu_data_bytes(tokens_per_epoch: float, epochs: float) -> float:
    """What the loop keeps of the data on CPU: the cleaned examples once, the packed rows for
    every epoch it schedules (whole epochs: the last partial one is packed in full)."""
    r = cpu_resident()
    return tokens_per_epoch * (r.example_bytes_per_token + r.packed_bytes_per_token * math.ceil(max(epochs, 1.0)))


@dataclass(frozen=True)
class Setup:
    """What is trained, how, and on what. Defaults are tunesmith's run-config defaults."""

    method: Literal["lora", "qlora", "full"] = "lora"
    seq_len: int = 512
    micro_batch: int = 4
    gradient_checkpointing: bool = False
    lora_r: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ALL_LINEAR
    optimizer: str = "adamw"
    device: Literal["cuda", "cpu"] = "cuda"
    dtype: Literal["bf16", "fp32"] = "bf16"  # the base weights of LoRA; CPU runs use fp32
    double_quant: bool = True
    trained_fraction: float = 1.0  # share of positions with a loss; 1.0 plans for the worst case
    gpus: int = 1
    strategy: str = "ddp"
    offload_activations: bool = False  # checkpointed layer inputs in host memory (needs checkpointing)
    release_freed_memory: bool = False  # a CPU process with malloc's mmap threshold fixed (train/lean.py)

    @property
    def tokens(self) -> int:
        return self.seq_len * self.micro_batch


@dataclass(frozen=True)
class Precision:
    """Bytes per element of each kind of tensor, for a method on a device."""

    residual: int  # the hidden states between layers
    linear_out: int  # what the projections return (attention and MLP run in it)
    norm_trainable: bool
    weights_trainable: bool  # full fine-tuning: every linear keeps its input
    autocast: bool  # fp32 weights, bf16 matmuls: each linear keeps a bf16 copy of its input
    mask: int  # dropout mask per element: bool (torch's dropout on CUDA, BitDropout on CPU)


def precision(s: Setup) -> Precision:
    if s.method == "full":
        # fp32 master weights; on a GPU under bf16 autocast, on CPU plain fp32.
        gpu = s.device == "cuda"
        return Precision(residual=4, linear_out=2 if gpu else 4, norm_trainable=True, weights_trainable=True,
                         autocast=gpu, mask=0)
    # LoRA and QLoRA alike (train/lean.py): the activations in the base's dtype, the adapters
    # multiplying in it too; bitsandbytes returns each 4-bit layer's output in its input's dtype.
    e = 4 if s.dtype == "fp32" else 2
    mask = 0 if s.lora_dropout == 0 else 1
    return Precision(residual=e, linear_out=e, norm_trainable=False, weights_trainable=False, autocast=False, mask=mask)


# ---------------------------------------------------------------- parameters

def module_shapes(f: ModelFacts) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear layer in a decoder layer, by the name LoRA targets."""
    q, kv = f.heads * f.head_dim, f.kv_heads * f.head_dim
    if f.fused_projections:
        return {"qkv_proj": (f.hidden, q + 2 * kv), "o_proj": (q, f.hidden),
                "gate_up_proj": (f.hidden, 2 * f.intermediate), "down_proj": (f.intermediate, f.hidden)}
    return {
        "q_proj": (f.hidden, q), "k_proj": (f.hidden, kv), "v_proj": (f.hidden, kv), "o_proj": (q, f.hidden),
        "gate_proj": (f.hidden, f.intermediate), "up_proj": (f.hidden, f.intermediate),
        "down_proj": (f.intermediate, f.hidden),
    }


MLP_MODULES = ("gate_proj", "up_proj", "gate_up_proj", "down_proj")


# MoE families whose fused 3-D expert weights peft adapts all the same (through its parameter
# wrapper, which refuses any lora_dropout): not planned yet, so refused rather than undercounted.
ADAPTED_EXPERTS = ("qwen3_moe",)


def adapted_modules(f: ModelFacts, s: Setup) -> list[str]:
    """The targets LoRA attaches to (none for full fine-tuning). MoE experts are fused 3-D
    weights in transformers, not linear layers, so MLP targets match nothing there (Mixtral);
    where peft adapts them anyway (Qwen3-MoE), MLP targets are refused."""
    if s.method == "full":
        return []
    names = [m for m in module_shapes(f) if m in s.target_modules]
    experts_targeted = [m for m in names if m in MLP_MODULES]
    if f.model_type in ADAPTED_EXPERTS and experts_targeted:
        raise UsageError(f"method.target_modules: LoRA on {f.model_type}'s experts ({', '.join(experts_targeted)}) "
                         f"is not supported yet (peft adapts the fused expert weights only with dropout 0, and "
                         f"tunesmith does not plan those adapters); target the attention layers: --set "
                         f"method.target_modules=[q_proj,k_proj,v_proj,o_proj], or use method full")
    return [m for m in names if not (f.experts > 1 and m in MLP_MODULES)]


def lora_params(f: ModelFacts, s: Setup) -> int:
    shapes = module_shapes(f)
    return f.layers * sum(s.lora_r * sum(shapes[m]) for m in adapted_modules(f, s))


def trainable_params(f: ModelFacts, s: Setup) -> int:
    return count_params(f)["total"] if s.method == "full" else lora_params(f, s)


def nf4_bits(double_quant: bool) -> float:
    """4-bit values plus their fp32 absmax per block of 64; double quantisation stores the
    absmax in 8 bits with one fp32 scale per 256 blocks."""
    return 4 + (8 / 64 + 32 / (64 * 256) if double_quant else 32 / 64)


def weight_bytes(f: ModelFacts, s: Setup) -> float:
    counts = count_params(f)
    if s.method == "full":
        return 4.0 * counts["total"]
    e = 4.0 if s.dtype == "fp32" else 2.0
    if s.method == "qlora":
        # The rest (embeddings, head, norms) stays in the base's dtype (train/lean.py's kbit_casts).
        linear = f.layers * counts["linear_per_layer"]
        return linear * nf4_bits(s.double_quant) / 8 + e * (counts["total"] - linear)
    return e * counts["total"]


def optimizer_bytes_per_param(optimizer: str) -> float:
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"optimizer {optimizer!r} is not known; choose one of {', '.join(OPTIMIZERS)}")
    return 2 + 2 * 4 / 2048 if optimizer.endswith("8bit") else 8.0


def optimizer_state_bytes(f: ModelFacts, s: Setup) -> float:
    per_param = optimizer_bytes_per_param(s.optimizer)
    if s.optimizer.endswith("8bit") and s.method != "full":
        # LoRA matrices are r x features: all above min_8bit_size (4,096) for real models.
        small = f.layers * sum(s.lora_r * sum(module_shapes(f)[m]) for m in adapted_modules(f, s)
                               if s.lora_r * min(module_shapes(f)[m]) < 4096)
        return per_param * (trainable_params(f, s) - small) + 8.0 * small
    return per_param * trainable_params(f, s)


# ---------------------------------------------------------------- activations

def _input_group(width: int, consumers: list[str], adapted: list[str], p: Precision, e_in: int,
                 requires_grad: bool) -> float:
    """Bytes per token saved for the input of linear layers that share it (q/k/v read the same
    normed input). A trained weight keeps its input (a bf16 copy per layer under autocast);
    an adapter multiplies in its input's dtype and keeps the input itself (shared), or its
    dropout's output plus the mask."""
    shared = 0
    saved = 0.0
    for name in consumers:
        if p.weights_trainable:
            if p.autocast:
                saved += 2 * width
            else:
                shared = e_in
        if name in adapted:
            if p.mask:
                saved += e_in * width + (p.mask * width if requires_grad else 0)
            else:
                shared = e_in
    return saved + shared * width


def layer_activation_bytes(f: ModelFacts, s: Setup, first: bool = False) -> dict[str, float]:
    """Bytes per token autograd saves in one decoder layer, by part. `first`: the first layer of
    a frozen model, whose input (the embedding output) needs no gradient."""
    p = precision(s)
    adapted = adapted_modules(f, s)
    q, kv = f.heads * f.head_dim, f.kv_heads * f.head_dim
    e = p.linear_out
    input_grad = not first or p.weights_trainable
    # RMSNorm saves its input in fp32 (the input itself when it already is), 1/rms, and the
    # normalised value when its weight trains.
    norm_one = 4 * f.hidden + 4 + (4 * f.hidden if p.norm_trainable else 0)
    norms = f.norms_per_layer * norm_one - (0 if input_grad else 4 * f.hidden + 4)
    if f.qk_norm:
        # Qwen3's and Gemma 3's q/k norms: the same per query and key head, over head_dim,
        # except the normalised value kept for the weight: Gemma 3 multiplies in fp32, Qwen3
        # casts back to q's dtype first (bf16 under autocast).
        kept = 4 if f.model_type in GEMMA_FAMILIES or not p.autocast else 2
        norms += (f.heads + f.kv_heads) * (4 * f.head_dim + 4 + (kept * f.head_dim if p.norm_trainable else 0))
    # The layers that read the normed input: q/k/v (or Phi's fused qkv_proj), gate/up.
    present = module_shapes(f)
    qkv = [m for m in ("q_proj", "k_proj", "v_proj", "qkv_proj") if m in present]
    gate_up = [m for m in ("gate_proj", "up_proj", "gate_up_proj") if m in present]
    attention_in = _input_group(f.hidden, qkv, adapted, p, 4 if p.autocast else p.residual, input_grad)
    e_sdpa = 2 if p.autocast else e
    if f.attention_softcap:
        # Eager attention (SDPA cannot cap scores): q and the key/value heads repeated for
        # every query head, then per query head and key position the tanh-capped scores,
        # the fp32 softmax and its cast back. Quadratic in the row length.
        sdpa = e_sdpa * 3 * q + f.heads * s.seq_len * (e_sdpa + 4 + (e_sdpa if e_sdpa != 4 else 0))
    else:
        # SDPA/flash keeps q, k, v and its output (bf16 copies under autocast) and an fp32
        # logsumexp per head; no s x s matrix. In fp32 on a GPU the attention repeats the
        # key/value heads (train/attention.py), so k and v are as wide as q. On a CPU it runs
        # in fp32 whatever the model's dtype (train/attention.py: faster there).
        e_kernel = 4 if s.device == "cpu" else e_sdpa
        kv_kept = q if e_kernel == 4 and s.device == "cuda" else kv
        sdpa = e_kernel * (2 * q + 2 * kv_kept) + 4 * f.heads
    out_proj = _input_group(q, ["o_proj"], adapted, p, e_sdpa, True)
    mlp_in = _input_group(f.hidden, gate_up, adapted, p, 4 if p.autocast else p.residual, True)
    # SwiGLU: the activation keeps its input (gate), the product keeps both factors.
    mlp_inner = 3 * e * f.intermediate
    mlp_out = _input_group(f.intermediate, ["down_proj"], adapted, p, e, True)
    lora_hidden = e * s.lora_r * len(adapted)  # each adapter's A output, kept for B's gradient
    if f.experts > 1:
        # Each token passes through `active_experts` experts; the router weights multiply
        # each expert's output (kept), and the expert inputs are gathered copies.
        per_expert = mlp_inner + mlp_out + e * f.hidden + (e * f.hidden if p.weights_trainable else 0)
        mlp_inner, mlp_out = f.active_experts * per_expert, 0.0
        mlp_in += 4 * f.experts  # router probabilities
    parts = {
        "norms": norms,
        "attention_inputs": attention_in,
        "attention": sdpa,
        "attention_output": out_proj,
        "mlp_inputs": mlp_in,
        "mlp": mlp_inner + mlp_out,
        "lora": lora_hidden,
    }
    return parts


def outside_activation_bytes(f: ModelFacts, s: Setup) -> float:
    """Bytes per token saved outside the decoder layers, except the loss's: the final norm and
    the rotary cos/sin tables."""
    p = precision(s)
    final_norm = 4 * f.hidden + 4 + (4 * f.hidden if p.norm_trainable else 0)
    rope = 2 * f.head_dim * p.residual
    return final_norm + rope


def loss_chunk_positions(f: ModelFacts) -> int:
    return max(1, LOSS_CHUNK_BYTES // (4 * f.vocab))


def trained_hidden_bytes(f: ModelFacts, s: Setup) -> float:
    """The hidden states of a micro-batch's trained positions (or their gradients), in the
    residual stream's dtype."""
    return precision(s).residual * f.hidden * s.tokens * s.trained_fraction


def saved_logits_bytes(f: ModelFacts, s: Setup) -> float:
    """What the loss keeps from the forward pass for backward: the gradient of each trained
    position's hidden state (in its dtype) and, when the head trains, of the head's weight (fp32)."""
    head = 4 * f.vocab * f.hidden if precision(s).weights_trainable else 0
    return trained_hidden_bytes(f, s) + head


def logits_bytes(f: ModelFacts, s: Setup) -> float:
    """Peak bytes of the loss on one micro-batch: what it keeps for backward, the trained
    positions' hidden states gathered for the head, and one chunk's working set: its fp32
    logits and logsumexp's temporary of the same size (2 x 4 B x V per position, measured;
    Gemma 2's soft-capping keeps its tanh beside them), and under autocast the head's bf16
    copy, made once for all chunks."""
    chunk = min(s.tokens * s.trained_fraction, loss_chunk_positions(f))
    per_position = 8 * f.vocab + (4 * f.vocab if f.logit_softcap else 0)
    cast = 2 * f.vocab * f.hidden if precision(s).autocast else 0
    return saved_logits_bytes(f, s) + trained_hidden_bytes(f, s) + per_position * chunk + cast


def adapter_copy_bytes(f: ModelFacts, s: Setup) -> float:
    """The fp32 adapters cast to a bf16 base's dtype, which every adapted layer keeps for its
    input's gradient (train/lean.py): r x (in + out) per adapter, per decoder layer, whatever
    the token count; nothing on an fp32 base."""
    e = precision(s).linear_out
    return 0.0 if s.method == "full" or e == 4 else e * lora_params(f, s)


def checkpointed_input_bytes(f: ModelFacts, s: Setup) -> float:
    """With gradient checkpointing, what stays of each layer: its input (the residual stream)."""
    return s.tokens * f.layers * precision(s).residual * f.hidden


def activation_bytes(f: ModelFacts, s: Setup) -> float:
    """Bytes autograd holds on the device at the end of the forward pass for one micro-batch,
    logits aside. With gradient checkpointing each layer keeps only its input, and with
    offloading not even that (on a GPU: on a CPU it is host memory already)."""
    outside = s.tokens * outside_activation_bytes(f, s)
    if s.gradient_checkpointing:
        return outside + (0.0 if offloads(s) else checkpointed_input_bytes(f, s))
    layer = sum(layer_activation_bytes(f, s).values())
    first = sum(layer_activation_bytes(f, s, first=True).values())
    return s.tokens * ((f.layers - 1) * layer + first) + outside + adapter_copy_bytes(f, s)


def offloads(s: Setup) -> bool:
    """Whether the checkpointed layer inputs leave the device (they cannot leave a CPU)."""
    return s.gradient_checkpointing and s.offload_activations and s.device == "cuda"


def recompute_bytes(f: ModelFacts, s: Setup) -> float:
    """With gradient checkpointing, one layer's activations rebuilt during its backward (and,
    when offloaded, its input copied back)."""
    if not s.gradient_checkpointing:
        return 0.0
    back = s.tokens * precision(s).residual * f.hidden if offloads(s) else 0.0
    return s.tokens * sum(layer_activation_bytes(f, s).values()) + adapter_copy_bytes(f, s) / f.layers + back


# ---------------------------------------------------------------- the peak

def transient_bytes(f: ModelFacts, s: Setup) -> float:
    """Gradients in flight inside one layer's backward: two intermediate-sized tensors beside
    what the layer saved (measured on CPU), in the dtype the layers multiply in; for QLoRA also
    one dequantised weight."""
    p = precision(s)
    g = p.linear_out  # the adapters multiply in it too (train/lean.py)
    dequant = 0.0
    if s.method == "qlora":
        # bitsandbytes dequantises a 4-bit weight to the compute dtype for each matmul, forward
        # and backward: the layer's largest weight in flight (unmeasured: no GPU here yet).
        dequant = g * max(i * o for i, o in module_shapes(f).values())
    moe = 0.0
    if f.experts > 1 and p.weights_trainable:
        # Fused expert weights are indexed per expert: each index's backward allocates a
        # zero gradient the size of the whole gate+up tensor before adding it in.
        moe = 4.0 * f.experts * 2 * f.intermediate * f.hidden
    # Measured, not derived: frozen experts' backward with every activation alive (Mixtral
    # LoRA, fp32, no checkpointing) holds gradients for every routed copy of a token; neither
    # full fine-tuning's peak at the first layer (Qwen3-MoE) nor a recomputed layer does.
    frozen_moe = f.experts > 1 and not p.weights_trainable and not s.gradient_checkpointing
    routed = s.tokens * (f.active_experts if frozen_moe else 1)
    return 2 * g * f.intermediate * routed + moe + dequant


def step_temp_bytes(f: ModelFacts, s: Setup) -> float:
    """AdamW's temporaries in `step()`: torch's foreach path (the CUDA default) takes one
    parameter-sized buffer for all parameters at once; on CPU it runs tensor by tensor, and
    `exp_avg_sq.sqrt() / c` holds two copies of the largest one; 8-bit optimizers update in
    place."""
    if s.optimizer.endswith("8bit"):
        return 0.0
    if s.device == "cuda":
        return 4.0 * trainable_params(f, s)
    if s.method != "full":
        return 8.0 * max((s.lora_r * max(module_shapes(f)[m]) for m in adapted_modules(f, s)), default=0)
    return 8.0 * max(f.vocab * f.hidden, f.hidden * f.intermediate)


@dataclass(frozen=True)
class Memory:
    """Bytes per GPU (or for the CPU process), by component, and the peak.

    `phases` is what each moment of a step adds to the resident bytes (weights, adapters,
    optimizer state); the largest sets the peak."""

    components: dict[str, float]
    phases: dict[str, float]
    allocated: float  # resident + the largest phase: what the allocator hands out at the peak
    peak: float  # plus the allocator's slack and the CUDA context; on CPU the resident set (data aside)
    cpu_bytes: float = 0.0  # host memory needed for offloaded state
    notes: list[str] = field(default_factory=list)

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)

    def gb(self) -> dict[str, float]:
        return {name: round(value / GB, 3) for name, value in self.components.items()}


def estimate(f: ModelFacts, s: Setup) -> Memory:
    """Peak memory per device for one training step of `s` on the model `f`.

    peak = resident (weights, adapters, optimizer state)
         + max(backward start: activations + logits or a recomputed layer [+ autocast copies],
               backward end, full fine-tuning: gradients + the first layer's activations,
               optimizer step: gradients + the optimizer's temporary [+ DDP buckets])
         + the allocator's slack and the CUDA context; on a CPU, what the kernel counts: the
           allocated peak x (1 + the measured slack) + the process (catalog/cpu_memory.json).
    The data a CPU run keeps in Python lists is not here (no token count): `cpu_data_bytes`.
    """
    if s.strategy not in STRATEGIES:
        raise UsageError(f"strategy {s.strategy!r} is not known; choose one of {', '.join(STRATEGIES)}")
    n = max(1, s.gpus)
    counts = count_params(f)
    trainable = trainable_params(f, s)
    weights = weight_bytes(f, s)
    adapters = 4.0 * trainable if s.method != "full" else 0.0
    grads = 4.0 * trainable
    optimizer = optimizer_state_bytes(f, s)
    step_temp = step_temp_bytes(f, s)
    copies = 0.0
    if precision(s).autocast:
        # The decoder's linear layers; the loss casts the head itself and frees the copy.
        copies = 2.0 * f.layers * counts["linear_per_layer"]
    buckets = 0.0
    cpu = 0.0
    notes: list[str] = []
    if n > 1 and s.strategy == "ddp":
        buckets = grads  # DDP's flat all-reduce buckets: one more copy of the gradients
    if n > 1 and s.strategy != "ddp":
        grads, optimizer, step_temp = grads / n, optimizer / n, step_temp / n
        if s.strategy == "zero2" and s.method == "full":
            # DeepSpeed ZeRO-2 in bf16: the bf16 weights on every GPU, the fp32 master copy
            # partitioned with the optimizer state; no autocast copies.
            optimizer += weights / n
            weights, copies = weights / 2, 0.0
        if s.strategy in ("fsdp", "fsdp_offload", "zero3"):
            # Parameters sharded; each layer is gathered (bf16) for its forward and backward,
            # with the next one prefetched; FSDP casts, so no autocast copies stay alive.
            layer_bf16 = 2.0 * counts["per_layer"]
            weights, adapters = weights / n + 2 * layer_bf16, adapters / n
            copies = 0.0
        if s.strategy == "fsdp_offload":
            cpu = weights + adapters + grads * n + optimizer * n
            weights = 2 * 2.0 * counts["per_layer"]
            adapters, optimizer, step_temp = 0.0, 0.0, 0.0
            grads = 2.0 * counts["per_layer"]  # one layer's gradients in flight to the host
            notes.append("optimizer state, master weights and gradients live in host memory")
    activations = activation_bytes(f, s)
    offloaded = 0.0
    if s.offload_activations and s.gradient_checkpointing:
        if offloads(s):
            offloaded = checkpointed_input_bytes(f, s)
            cpu += offloaded
            notes.append(f"train.offload_activations: each layer's checkpointed input ({offloaded / GB:.2f} GB in "
                         f"all) waits in pinned host memory for its backward: a copy each way per layer")
        else:
            notes.append("train.offload_activations saves nothing on a CPU: the activations already are in host "
                         "memory")
    logits = logits_bytes(f, s)
    recompute = recompute_bytes(f, s)
    transient = transient_bytes(f, s)
    layer = s.tokens * sum(layer_activation_bytes(f, s).values())
    # Checkpointed layers are rebuilt after the loss's chunk is gone: the two never overlap;
    # the gradients the loss keeps live until the head's backward (the weight's until the step).
    kept = saved_logits_bytes(f, s)
    phases = {"backward": activations + kept + max(logits - kept, recompute + transient) + copies,
              "optimizer_step": grads + step_temp + buckets}
    if s.method == "full":
        # Weight gradients pile up while activations are released: when the first layer
        # starts its backward it still holds its activations and every later gradient exists
        # (fused MoE experts get their whole gradient at the first expert's backward).
        shard = n if n > 1 and s.strategy != "ddp" else 1
        first_layer = counts["per_layer"] if f.experts == 1 else 0
        not_yet = 4.0 * (first_layer + (counts["embedding"] if counts["lm_head"] else 0)) / shard
        phases["backward_end"] = grads - not_yet + layer + transient
    resident = weights + adapters + optimizer
    allocated = resident + max(phases.values())
    components = {
        "weights": weights,
        "adapters": adapters,
        "optimizer": optimizer,
        "activations": activations,
        "offloaded_activations": offloaded,  # in host memory, not counted in the peak
        "logits": logits,
        "recompute": recompute,
        "backward_transient": transient,
        "autocast_copies": copies,
        "gradients": grads,
        "optimizer_step": step_temp,
        "ddp_buckets": buckets,
    }
    if s.device == "cuda":
        components["allocator"] = ALLOCATOR_OVERHEAD * allocated
        components["cuda_context"] = CUDA_CONTEXT_BYTES
        peak = allocated * (1 + ALLOCATOR_OVERHEAD) + CUDA_CONTEXT_BYTES
    else:
        # The kernel counts the resident set, not what torch's allocator handed out: the C
        # allocator keeps freed blocks (and glibc's mmap threshold rises after each large free,
        # so later tensors come from heaps it seldom returns), the eval pass reuses them
        # unevenly, and the interpreter and libraries sit below it all.
        resident_model = cpu_resident()
        slack = resident_model.slack_released if s.release_freed_memory else resident_model.slack
        components["allocator"] = slack * allocated
        components["process"] = resident_model.process_bytes
        peak = allocated * (1 + slack) + resident_model.process_bytes
    if s.optimizer.startswith("paged"):
        notes.append("paged optimizer state can spill to host memory under pressure (slower, not an OOM)")
    return Memory(components=components, phases=phases, allocated=allocated, peak=peak, cpu_bytes=cpu, notes=notes)
