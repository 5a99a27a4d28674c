"""An exported adapter in PyTorch: its configuration (read from `adapter_config.json`, validated)
and the module that computes residuals and messages from stacked cache tensors `[N, B, S, K, H]`.

`lcf_jax.torch.cache` applies it to transformers' cache objects; `lcf_jax.torch.load` reads it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from lcf_jax.adapter_format import CONFIG_FILE, REEXPORT, adapter_problems, refuse
from lcf_jax.errors import AdapterFormatError
from lcf_jax.torch.modules import C2CProjector, LCFProjector, SpanPool


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """What an adapter needs to know of a model: the shape of its KV cache."""

    num_layers: int
    num_kv_heads: int
    head_dim: int

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    def describe(self) -> str:
        return f"L={self.num_layers} layers, K={self.num_kv_heads} kv heads, H={self.head_dim} head dim"

    @classmethod
    def of(cls, model: Any) -> ModelShape:
        """The cache shape of a transformers model or config (PreTrainedModel or PretrainedConfig)."""
        config = getattr(model, "config", model)
        if hasattr(config, "get_text_config"):
            config = config.get_text_config(decoder=True)
        try:
            heads = config.num_attention_heads
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
            kv_heads = getattr(config, "num_key_value_heads", None) or heads
            return cls(int(config.num_hidden_layers), int(kv_heads), int(head_dim))
        except AttributeError as e:
            raise TypeError(f"expected a transformers model or config, got {type(model).__name__} ({e})") from None


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """The `adapter` section of `adapter_config.json`, reduced to what inference needs."""

    kind: str
    sharer: ModelShape
    receiver: ModelShape
    layers: tuple[int, ...]  # receiver layers with a projector, ascending
    source_layers: tuple[int, ...]  # the sharer layer each of them reads
    latent_width: int
    hidden_width: int
    activation: str
    message_slots: int
    message_injection: str
    receiver_conditioned: bool
    compute_dtype: str
    gate_inference: str = "hard"
    message_norm: str = "none"  # lcfx: "standardize" adds the pool's shift and scale

    @classmethod
    def from_json(cls, data: Any, where: str = CONFIG_FILE) -> AdapterConfig:
        """The `adapter` section `data` of a config, checked as lcf_jax checks it
        (`adapter_format.adapter_problems`); `where` names the file in errors."""
        refuse(adapter_problems(data), where, AdapterFormatError, REEXPORT)

        def shape(role: str) -> ModelShape:
            return ModelShape(data[role]["num_layers"], data[role]["num_kv_heads"], data[role]["head_dim"])

        return cls(
            kind=data["kind"],
            sharer=shape("sharer"),
            receiver=shape("receiver"),
            layers=tuple(data["layers"]),
            source_layers=tuple(data["source_layers"]),
            latent_width=data["latent_width"],
            hidden_width=data["hidden_width"],
            activation=data["activation"],
            message_slots=data.get("message_slots", 1),
            message_injection=data.get("message_injection", "broadcast"),
            receiver_conditioned=data.get("receiver_conditioned", False),
            compute_dtype=data.get("compute_dtype", "float32"),
            gate_inference=data.get("gate_inference", "hard"),
            message_norm=data.get("message_norm", "none"),
        )

    def describe(self) -> str:
        return (
            f"{self.kind} adapter on {len(self.layers)} of {self.receiver.num_layers} receiver layers; "
            f"sharer {self.sharer.describe()}; receiver {self.receiver.describe()}"
        )


@dataclasses.dataclass(frozen=True)
class Message:
    """What an LCF-X sharer sends: per adapter layer, M summary slots of sharer keys and values,
    `k, v` `[N, B, M, K_S, H_S]` (as lcf_jax.adapters.Message)."""

    k: torch.Tensor
    v: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: the message is all the receiver gets from the sharer."""
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()

    def zeros_like(self) -> Message:
        """The empty message (a control: the receiver gets nothing)."""
        return Message(torch.zeros_like(self.k), torch.zeros_like(self.v))


class Adapter(nn.Module):
    """One exported adapter: `projectors` (LCF or C2C, stacked over the kept layers) and, for lcfx,
    the span `pool`. Parameter names and shapes are the export's tensor names and shapes."""

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config
        n, s, r = len(config.layers), config.sharer, config.receiver
        common = dict(activation=config.activation, round_to=config.compute_dtype)
        if config.kind == "c2c":
            self.projectors = C2CProjector(
                n, s.kv_width, r.num_kv_heads, r.head_dim, hidden=config.hidden_width, **common
            )
        else:
            self.projectors = LCFProjector(
                n, s.kv_width, r.num_kv_heads, r.head_dim, latent_width=config.latent_width,
                soft_gates=config.gate_inference == "soft", **common,
            )  # fmt: skip
        if config.kind == "lcfx":
            self.pool = SpanPool(
                n,
                s.num_kv_heads,
                s.head_dim,
                slots=config.message_slots,
                receiver_width=r.kv_width if config.receiver_conditioned else None,
                standardize=config.message_norm == "standardize",
            )

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def extra_repr(self) -> str:
        return self.config.describe()

    def check_models(self, sharer: Any, receiver: Any) -> None:
        """Raise a clear error unless the transformers models (or configs) `sharer` and `receiver`
        have the cache shapes this adapter was built for."""
        for role, model, want in (("sharer", sharer, self.config.sharer), ("receiver", receiver, self.config.receiver)):
            got = ModelShape.of(model)
            if got != want:
                raise AdapterFormatError(
                    f"the {role} model has {got.describe()}, but this {self.kind} adapter was built for a {role} "
                    f"with {want.describe()}: use an adapter trained and exported for this model pair"
                )

    def gates(self) -> torch.Tensor:
        """`[N, 2]` bool: each kept layer's hard key and value gates (open where the logit is > 0)."""
        return self.projectors.gate_logits() > 0

    @torch.no_grad()
    def residuals(self, sk, sv, rk, rv) -> tuple[torch.Tensor, torch.Tensor]:
        """Residuals `[N, B, S, K_R, H_R]` for the receiver's keys and values from sharer entries
        `[N, B, S, K_S, H_S]` (position-matched, or S = 1: one summary for every position) and the
        receiver's own entries, computed in the adapter's dtype (float32 unless loaded otherwise)."""
        return self.projectors(*(x.to(self.dtype) for x in (sk, sv, rk, rv)))

    @torch.no_grad()
    def pool_message(self, sk, sv, span_ids, num_spans: int, receiver_k=None, receiver_mask=None) -> Message:
        """The message from the sharer's entries of the source layers `[N, B, S, K_S, H_S]` and each
        token's span `span_ids` `[B, S]` (-1: not pooled)."""
        if self.kind != "lcfx":
            raise ValueError(f"only an lcfx adapter summarises a sharer's context; this one is {self.kind!r}")
        if receiver_k is not None:
            receiver_k = receiver_k.to(self.dtype)
        k, v = self.pool(sk.to(self.dtype), sv.to(self.dtype), span_ids, num_spans, receiver_k, receiver_mask)
        return Message(k, v)
