"""Loss only where it is needed: the LM head runs on trained positions alone.

With response-only labels most positions are prompt; projecting them onto a 49k-word vocab
and taking a softmax is wasted work (on SmolLM2-135M the head is a fifth of the forward
FLOPs). Logits are upcast to fp32 only for the selected rows, which also keeps the B*S*V
logits buffer out of memory (ANCHORS: the fp32 upcast dominates Llama-3.1-8B's peak).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.models.encode import IGNORE


class TokenLoss(nn.Module):
    """Wraps a causal LM so that forward returns (summed loss, trained-token count).

    A module of its own so accelerate/DDP wraps this forward and gradient sync still fires.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.decoder = base.get_decoder()
        self.head = base.get_output_embeddings()
        # Gemma 2 style tanh soft-capping of the final logits.
        self.softcap = getattr(base.config, "final_logit_softcapping", None)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE
        logits = self.head(hidden[:, :-1][keep]).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        loss = F.cross_entropy(logits, targets[keep], reduction="sum")
        return loss, keep.sum()
