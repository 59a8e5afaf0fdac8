"""Phi-3: fused ``qkv_proj`` (rows q, then k, then v) and fused ``gate_up_proj`` (rows gate, then up)."""

from .base import ArchAdapter, AttentionView, MLPView, RowSlice


class Phi3Adapter(ArchAdapter):
    family = "phi3"
    model_types = ("phi3",)

    def attention(self, i: int) -> AttentionView:
        attn = self.layers[i].self_attn
        s = self.sizes()
        q_rows, kv_rows = s.num_attention_heads * s.head_dim, s.num_key_value_heads * s.head_dim
        return AttentionView(
            module=attn,
            q=RowSlice(attn.qkv_proj, 0, q_rows),
            k=RowSlice(attn.qkv_proj, q_rows, kv_rows),
            v=RowSlice(attn.qkv_proj, q_rows + kv_rows, kv_rows),
            o=attn.o_proj,
        )

    def mlp(self, i: int) -> MLPView:
        mlp = self.layers[i].mlp
        n = mlp.gate_up_proj.out_features // 2
        return MLPView(module=mlp, gate=RowSlice(mlp.gate_up_proj, 0, n), up=RowSlice(mlp.gate_up_proj, n, n),
                       down=mlp.down_proj)
