"""Names of the module attributes that hold head counts and flat head widths.

Model code keeps the number of attention heads (or of key/value heads, or of
groups) and the flat width ``heads * head_dim`` in attributes whose names vary
between libraries. When a plan removes whole heads, the module that runs the
attention has these attributes updated if their value still equals the traced
size (see :class:`~fastprune.structured.Plan`).
"""

__all__ = ["Q_HEAD_ATTRS", "KV_ATTRS", "HEAD_ATTRS", "FLAT_ATTRS"]

#: Attributes holding the number of query heads.
Q_HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "heads",
                "num_attention_heads_per_partition")

#: Attributes holding the number of key/value heads of grouped-query attention.
KV_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_kv_head")

#: Attributes holding a head or group count whose kind the graph cannot tell.
HEAD_ATTRS = Q_HEAD_ATTRS + ("groups", "num_groups")

#: Attributes holding the flat width of all heads together.
FLAT_ATTRS = ("all_head_size", "inner_dim", "attention_hidden_size")
