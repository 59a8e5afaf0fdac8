"""The interface every architecture adapter implements.

An adapter knows where one model family keeps its heads, neurons, norms and embeddings, so that importance
estimation, pruning and distillation never name a model type. Fused projections are exposed as row slices of the
fused ``nn.Linear`` so callers treat fused and unfused layouts alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class RowSlice:
    """Output rows ``[start, start + size)`` of ``linear`` that form one logical projection (e.g. q inside qkv)."""

    linear: nn.Linear
    start: int
    size: int

    @property
    def weight(self) -> torch.Tensor:
        """``[size, in_features]`` view of the rows."""
        return self.linear.weight[self.start : self.start + self.size]

    @property
    def bias(self) -> torch.Tensor | None:
        b = self.linear.bias
        return None if b is None else b[self.start : self.start + self.size]

    @property
    def is_fused(self) -> bool:
        return self.size != self.linear.out_features


@dataclass(frozen=True)
class AttentionView:
    """One layer's attention projections. ``q``: ``num_heads*head_dim`` rows, ``k``/``v``: ``num_kv_heads*head_dim``
    rows; ``o`` reads ``num_heads*head_dim`` input columns. ``q_norm``/``k_norm`` act per head over ``head_dim``."""

    module: nn.Module
    q: RowSlice
    k: RowSlice
    v: RowSlice
    o: nn.Linear
    q_norm: nn.Module | None = None
    k_norm: nn.Module | None = None


@dataclass(frozen=True)
class MLPView:
    """One layer's MLP. ``gate`` is ``None`` for non-gated MLPs; ``down`` reads ``intermediate_size`` columns
    (the activation after gating)."""

    module: nn.Module
    gate: RowSlice | None
    up: RowSlice
    down: nn.Linear


@dataclass(frozen=True)
class Sizes:
    """The config numbers that describe a model's size."""

    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool


class ArchAdapter:
    """Base adapter: the Llama layout (``model.model.layers[i].self_attn.{q,k,v,o}_proj``, gated ``mlp``,
    ``input_layernorm``/``post_attention_layernorm`` RMSNorms, ``model.model.norm``, ``lm_head``).

    Families override only what differs. Class attributes describe conventions:

    - ``norm_weight_offset``: RMSNorm multiplies by ``offset + weight`` (0 for Llama, 1 for Gemma).
    - ``embedding_scale_power``: the embedding output is multiplied by ``hidden_size ** power`` (Gemma: 0.5).
    - ``per_layer_config_fields``: config lists with one entry per layer (sliced by depth pruning).
    - ``hidden_norm_names``: norms over the hidden size inside each decoder layer, in forward order.
    - ``norm_eps_field``: the config field holding the RMSNorm epsilon.
    """

    family: ClassVar[str] = "base"
    model_types: ClassVar[tuple[str, ...]] = ()
    norm_weight_offset: ClassVar[float] = 0.0
    embedding_scale_power: ClassVar[float] = 0.0
    per_layer_config_fields: ClassVar[tuple[str, ...]] = ("layer_types",)
    hidden_norm_names: ClassVar[tuple[str, ...]] = ("input_layernorm", "post_attention_layernorm")
    has_qk_norm: ClassVar[bool] = False
    norm_eps_field: ClassVar[str] = "rms_norm_eps"

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    # --- structure -------------------------------------------------------------------------------------------------
    @property
    def decoder(self) -> nn.Module:
        """The base transformer (``model.model``) that owns embeddings, layers and the final norm."""
        return self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.model

    @property
    def layers(self) -> nn.ModuleList:
        return self.decoder.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    @property
    def lm_head(self) -> nn.Linear:
        return self.model.get_output_embeddings()

    @property
    def final_norm(self) -> nn.Module:
        return self.decoder.norm

    @property
    def tied_embeddings(self) -> bool:
        return self.lm_head.weight is self.embed_tokens.weight

    @property
    def logit_softcap(self) -> float | None:
        """Final-logit soft-capping (``cap * tanh(logits / cap)``) or ``None``."""
        return getattr(self.config, "final_logit_softcapping", None)

    def attention(self, i: int) -> AttentionView:
        attn = self.layers[i].self_attn
        return AttentionView(
            module=attn,
            q=RowSlice(attn.q_proj, 0, attn.q_proj.out_features),
            k=RowSlice(attn.k_proj, 0, attn.k_proj.out_features),
            v=RowSlice(attn.v_proj, 0, attn.v_proj.out_features),
            o=attn.o_proj,
            q_norm=getattr(attn, "q_norm", None) if self.has_qk_norm else None,
            k_norm=getattr(attn, "k_norm", None) if self.has_qk_norm else None,
        )

    def mlp(self, i: int) -> MLPView:
        mlp = self.layers[i].mlp
        return MLPView(
            module=mlp,
            gate=RowSlice(mlp.gate_proj, 0, mlp.gate_proj.out_features),
            up=RowSlice(mlp.up_proj, 0, mlp.up_proj.out_features),
            down=mlp.down_proj,
        )

    def hidden_norms(self, i: int) -> list[nn.Module]:
        """Norms over the hidden size inside decoder layer ``i``, in forward order."""
        layer = self.layers[i]
        return [getattr(layer, name) for name in self.hidden_norm_names]

    def all_hidden_norms(self) -> list[nn.Module]:
        """Every norm whose weight has ``hidden_size`` entries: per-layer norms, then the final norm."""
        return [n for i in range(self.num_layers) for n in self.hidden_norms(i)] + [self.final_norm]

    def hidden_readers(self, i: int) -> list[nn.Linear]:
        """Distinct linears in layer ``i`` whose input is the hidden state (``in_features == hidden_size``)."""
        attn, mlp = self.attention(i), self.mlp(i)
        slices = [attn.q, attn.k, attn.v] + ([mlp.gate] if mlp.gate is not None else []) + [mlp.up]
        return _unique([s.linear for s in slices])

    def hidden_writers(self, i: int) -> list[nn.Linear]:
        """Linears in layer ``i`` whose output is added to the residual stream (``out_features == hidden_size``)."""
        return [self.attention(i).o, self.mlp(i).down]

    def layer_index_modules(self, i: int) -> list[nn.Module]:
        """Modules in layer ``i`` carrying a ``layer_idx`` attribute (cache indexing); depth pruning re-numbers them."""
        return [m for m in self.layers[i].modules() if hasattr(m, "layer_idx")]

    # --- conventions -----------------------------------------------------------------------------------------------
    def embedding_scale(self, hidden_size: int | None = None) -> float:
        """Factor the embedding output is multiplied by for a model of ``hidden_size`` (default: current)."""
        h = self.config.hidden_size if hidden_size is None else hidden_size
        return float(h) ** self.embedding_scale_power

    def effective_norm_weight(self, norm: nn.Module) -> torch.Tensor:
        """The per-channel multiplier a norm applies, ``offset + weight``, in fp32."""
        return norm.weight.float() + self.norm_weight_offset

    # --- sizes -----------------------------------------------------------------------------------------------------
    def sizes(self) -> Sizes:
        c = self.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return Sizes(
            num_hidden_layers=c.num_hidden_layers,
            hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size,
            num_attention_heads=c.num_attention_heads,
            num_key_value_heads=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
            head_dim=head_dim,
            vocab_size=c.vocab_size,
            tie_word_embeddings=self.tied_embeddings,
        )

    def check_consistent(self) -> None:
        """Raise if the module shapes disagree with the config (the adapter's view must match the model)."""
        s = self.sizes()
        if self.num_layers != s.num_hidden_layers:
            raise ValueError(f"config.num_hidden_layers={s.num_hidden_layers} but the model has {self.num_layers} layers")
        for field in self.per_layer_config_fields:
            values = getattr(self.config, field, None)
            if values is not None and len(values) != s.num_hidden_layers:
                raise ValueError(f"config.{field} has {len(values)} entries for {s.num_hidden_layers} layers")
        for i in range(self.num_layers):
            a, m = self.attention(i), self.mlp(i)
            expect = {
                "q rows": (a.q.size, s.num_attention_heads * s.head_dim),
                "k rows": (a.k.size, s.num_key_value_heads * s.head_dim),
                "v rows": (a.v.size, s.num_key_value_heads * s.head_dim),
                "o in": (a.o.in_features, s.num_attention_heads * s.head_dim),
                "o out": (a.o.out_features, s.hidden_size),
                "up rows": (m.up.size, s.intermediate_size),
                "down in": (m.down.in_features, s.intermediate_size),
            }
            for name, (got, want) in expect.items():
                if got != want:
                    raise ValueError(f"layer {i}: {name} is {got}, config implies {want}")

    def pruned_config(self, *, hidden_size: int, intermediate_size: int, num_attention_heads: int,
                      num_key_value_heads: int, kept_layers: list[int]):
        """This model's config after structured pruning: sizes rewritten, ``head_dim`` written explicitly (it no
        longer follows from ``hidden_size / num_attention_heads``), per-layer lists (``per_layer_config_fields``)
        sliced to the kept layers (old indices, ascending), and the norm epsilon multiplied by
        ``old_hidden / hidden_size``: with norm weights scaled by ``sqrt(old_hidden / hidden_size)`` an RMSNorm over
        the kept channels then equals the original one whenever the removed channels are zero (exactly, eps
        included). Per-head norms share the epsilon and see it grow by the same factor."""
        d = self.config.to_dict()
        d.update(hidden_size=hidden_size, intermediate_size=intermediate_size, num_attention_heads=num_attention_heads,
                 num_key_value_heads=num_key_value_heads, num_hidden_layers=len(kept_layers),
                 head_dim=self.sizes().head_dim)
        eps = d.get(self.norm_eps_field)
        if eps is not None and hidden_size != self.config.hidden_size:
            d[self.norm_eps_field] = eps * self.config.hidden_size / hidden_size
        for name in self.per_layer_config_fields:
            if d.get(name) is not None:
                d[name] = [d[name][i] for i in kept_layers]
        return type(self.config).from_dict(d)

    def summary(self) -> dict:
        """Sizes and parameter counts, as printed by ``hf-minitron info``."""
        s = self.sizes()
        total, non_embedding = count_parameters(self.model)
        return {
            "model_type": self.config.model_type,
            "family": self.family,
            "layers": s.num_hidden_layers,
            "hidden_size": s.hidden_size,
            "num_attention_heads": s.num_attention_heads,
            "num_key_value_heads": s.num_key_value_heads,
            "head_dim": s.head_dim,
            "intermediate_size": s.intermediate_size,
            "vocab_size": s.vocab_size,
            "tied_embeddings": s.tie_word_embeddings,
            "parameters": total,
            "non_embedding_parameters": non_embedding,
        }


def _unique(modules):
    seen, out = set(), []
    for m in modules:
        if id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(total, non_embedding)`` parameter counts. Tied weights count once; non-embedding excludes the input
    embedding and an untied LM head."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    embedding = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        embedding += head.weight.numel()
    return total, total - embedding
