"""The decoder maps of the families: where each `avmech.decoder.Decoder` method reaches.

Qwen2.5-Omni's thinker and video-SALMONN 2+ (Qwen2.5-VL's LLM) share the Qwen2 decoder
layer of transformers 5.x:

    layer(hidden_states, attention_mask=, position_ids=, position_embeddings=(cos, sin), cache=)
      self_attn: q_proj/k_proj/v_proj -> apply_rotary_pos_emb(q, k, cos, sin) -> attention
                 interface (eager or sdpa, with the mask) -> o_proj; returns (output, weights)
      mlp:       down_proj(act(gate_proj(x)) * up_proj(x))

with 3-D M-RoPE positions (temporal, height, width) turned into (cos, sin) once by the
decoder's ``rotary_emb``. `QwenDecoder` names those parts; it holds strings only, so the
same object travels inside a remote trace.

Qwen3-Omni's thinker (`Qwen3OmniDecoder`) keeps the names and the call, and differs in
three places: its attention normalises queries and keys per head (``q_norm``/``k_norm``)
before the rotary embedding, so the rotary op's output is still "after the rotary
embedding (and any q/k norms)"; its MLP is a sparse mixture (a router, then the top-k of
its experts; no shared expert), which only changes the FLOP count; and DeepStack: the
text model adds visual features of early ViT blocks to the residual stream of the visual
positions after its first decoder layers, outside any layer (`Qwen3OmniDecoder.after_layer`).
Its positions are the same 3 rows (temporal, height, width); they may be fractional
(``t * seconds_per_grid * 13``), so generated tokens count on from the exact maximum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from avmech.errors import ModelError


@dataclass(frozen=True)
class QwenDecoder:
    """The Qwen2 / Qwen2.5 decoder (see the module docstring); a family with other names
    or extra steps subclasses it and overrides only what differs."""

    attention_name: str = "self_attn"
    mlp_name: str = "mlp"
    out_proj: str = "o_proj"
    rotary_op: str = "apply_rotary_pos_emb_0"  # the op inside the attention forward, as nnsight's .source names it
    rotary_module: str = "rotary_emb"
    hidden_kw: str = "hidden_states"
    mask_kw: str = "attention_mask"
    rotary_kw: str = "position_embeddings"
    positions_kw: str = "position_ids"
    position_axes: int = 3
    injected_layers: tuple[int, ...] = ()

    # ---- inside a trace (modules or envoys) -------------------------------------------
    def attention(self, layer: Any) -> Any:
        return getattr(layer, self.attention_name)

    def mlp(self, layer: Any) -> Any:
        return getattr(layer, self.mlp_name)

    def heads_in(self, layer: Any) -> Any:
        return getattr(self.attention(layer), self.out_proj)

    def qk(self, layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self.attention(layer).source, self.rotary_op).output

    def scaling(self, layer: Any) -> float:
        return self.attention(layer).scaling

    def keys_values(self, layer: Any, n_kv_heads: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inside a trace: the keys (after the rotary embedding) and values ``[b, kv_heads, pos,
        d_head]`` of a layer, as its KV cache would hold them (values read first: v_proj runs
        before the rotary embedding)."""
        rotary = getattr(self.attention(layer).source, self.rotary_op)  # reached before the forward starts
        values = self.attention(layer).v_proj.output
        values = values.view(*values.shape[:2], n_kv_heads, head_dim).transpose(1, 2)
        return rotary.output[1], values

    # ---- outside a trace (modules) ------------------------------------------------------
    def new_cache(self) -> Any:
        """An empty KV cache (its layers made as they are filled)."""
        from transformers import DynamicCache

        return DynamicCache()

    def next_positions(self, position_ids: torch.Tensor, step: int) -> torch.Tensor:
        """Text after the prompt counts on from its largest id on every axis."""
        return torch.full((self.position_axes, 1, 1), int(position_ids.max()) + 1 + step, dtype=torch.long,
                          device=position_ids.device)

    def mlp_flops(self, llm: nn.Module) -> float:
        """Gated MLP: three ``d x d_mlp`` products per position."""
        d_mlp = self.mlp(llm.layers[0]).gate_proj.out_features
        return 2.0 * 3 * llm.config.hidden_size * d_mlp

    def after_layer(self, index: int, hidden: torch.Tensor, positions: torch.Tensor,
                    extra: dict[str, Any]) -> torch.Tensor:
        return hidden


@dataclass(frozen=True)
class Qwen3OmniDecoder(QwenDecoder):
    """Qwen3-Omni's thinker (see the module docstring): ``injected_layers`` are its DeepStack
    layers (one per DeepStack level of the ViT), ``visual_ids`` its image and video
    placeholder ids. Built per model at load, from its config; plain values only."""

    visual_ids: tuple[int, ...] = ()

    def next_positions(self, position_ids: torch.Tensor, step: int) -> torch.Tensor:
        """Text after the prompt counts on from its largest id (fractional ones included)."""
        return (position_ids.max() + 1 + step).reshape(1, 1, 1).expand(self.position_axes, 1, 1).clone()

    def mlp_flops(self, llm: nn.Module) -> float:
        """Per position: the router (``d x n_experts``) and the ``top_k`` active experts'
        gated MLPs (``2 * 3 * d * d_expert`` each); a dense layer as `QwenDecoder`. Layers
        of different cost are refused: the FLOP model takes one cost per layer."""
        d = llm.config.hidden_size
        costs = set()
        for layer in llm.layers:
            mlp = self.mlp(layer)
            if hasattr(mlp, "experts"):
                n_experts, _, d_expert = mlp.experts.down_proj.shape
                costs.add(2.0 * d * n_experts + mlp.gate.top_k * 2.0 * 3 * d * d_expert)
            else:
                costs.add(2.0 * 3 * d * mlp.gate_proj.out_features)
        if len(costs) != 1:
            raise ModelError(f"the decoder layers' MLPs differ in cost ({sorted(costs)} FLOPs per position): "
                             "avmech's FLOP model takes one MLP cost for every layer")
        return costs.pop()

    def deepstack(self, index: int, extra: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """What DeepStack adds after layer ``index``: the visual positions (bool ``[pos]``) and
        their features ``[n_visual, d]``, from the run's inputs (``input_ids`` and the
        encoders' ``mm_encoder_outputs``, see `avmech.models.qwen3_omni`), joined image and
        video features in position order as the model joins them; None where nothing is added."""
        outputs = extra.get("mm_encoder_outputs") or {}
        if index not in self.injected_layers or not outputs:
            return None
        ids = extra["input_ids"][0]
        visual = torch.isin(ids, torch.tensor(self.visual_ids, device=ids.device))
        kinds = ids[visual]
        features = None
        for token_id, key in zip(self.visual_ids, ("image", "video")):
            if key in outputs:
                level = torch.cat(outputs[key].deepstack_features[index])
                if features is None:
                    features = level.new_zeros(len(kinds), level.shape[-1])
                features[kinds == token_id] = level
        return visual, features

    def after_layer(self, index: int, hidden: torch.Tensor, positions: torch.Tensor,
                    extra: dict[str, Any]) -> torch.Tensor:
        """``hidden`` (``[b, rows, d]``, the original ``positions``) with layer ``index``'s
        DeepStack features added at its visual rows, as the text model adds them."""
        injected = self.deepstack(index, extra)
        if injected is None:
            return hidden
        visual, features = injected
        positions = positions.to(hidden.device)
        beyond = int(positions.max()) + 1 - len(visual)  # generated tokens after the prompt: nothing is added there
        visual = torch.cat([visual, visual.new_zeros(max(beyond, 0))]).to(hidden.device)
        rows = visual[positions]
        rank = torch.cumsum(visual, 0) - 1
        hidden = hidden.clone()
        hidden[:, rows] = hidden[:, rows] + features[rank[positions][rows]].to(hidden.device, hidden.dtype)
        return hidden
