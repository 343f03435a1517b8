"""Rotary position embedding moved into GroupQueryAttention (`do_rotary`), for `attention_rewrite.py`.

The export applies Hugging Face's `apply_rotary_pos_emb` per layer as ~30 small nodes on the query and the key
(rotate_half's Slice/Neg/Concat, the Muls and Add, and the shape arithmetic feeding the slices): in a decode step
of a small model they are a third of ONNX Runtime's kernel time, dispatch rather than arithmetic. GroupQueryAttention
rotates the new query and key itself from cos/sin tables indexed by each row's position (its prefill positions
from 0, a decode token's at its row's cached length: `kv_cache.py`'s contract), so the rewrite hands it the
unrotated tensors and the tables, and the per-layer nodes and the graph's own cos/sin computation become dead.

The tables are the graph's own cos/sin subgraph evaluated at positions 0..max_position_embeddings-1, so the
model's rope scaling and attention scaling come with them. Anything else (an interleaved or partial rotary, tables
that need more than position_ids) is left unfused: `find` returns None and the graph keeps its own rotary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class RotaryInputs:
    """One layer's query or key as GroupQueryAttention takes it with do_rotary: before the rotation."""

    unrotated: str  # [batch, heads, seq, head_dim], the tensor the export rotated
    cos: str  # the graph's cos [batch, seq, head_dim] (before the per-layer Unsqueeze)
    sin: str


def _producer(producers: dict[str, Any], tensor: str, op_type: str) -> Optional[Any]:
    node = producers.get(tensor)
    return node if node is not None and node.op_type == op_type else None


def _before_unsqueeze(producers: dict[str, Any], tensor: str) -> str:
    node = _producer(producers, tensor, "Unsqueeze")
    return node.input[0] if node is not None else tensor


def _rotate_half_of(producers: dict[str, Any], tensor: str) -> Optional[str]:
    """x where `tensor` = Concat(-x[..., half:], x[..., :half]) on the last axis, else None."""
    concat = _producer(producers, tensor, "Concat")
    if concat is None or len(concat.input) != 2:
        return None
    axis = next((a.i for a in concat.attribute if a.name == "axis"), None)
    if axis not in (-1, 3):
        return None
    neg = _producer(producers, concat.input[0], "Neg")
    first_half = _producer(producers, concat.input[1], "Slice")
    second_half = _producer(producers, neg.input[0], "Slice") if neg is not None else None
    if first_half is None or second_half is None or first_half.input[0] != second_half.input[0]:
        return None
    return first_half.input[0]


def find(producers: dict[str, Any], rotated: str) -> Optional[RotaryInputs]:
    """The unrotated tensor and cos/sin of `rotated` = x * cos + rotate_half(x) * sin, else None."""
    add = _producer(producers, rotated, "Add")
    if add is None:
        return None
    muls = [_producer(producers, name, "Mul") for name in add.input]
    if None in muls:
        return None
    for direct, turned in (muls, muls[::-1]):
        for side in (0, 1):
            x = _rotate_half_of(producers, turned.input[side])
            if x is None or x not in direct.input:
                continue
            cos = direct.input[1 - list(direct.input).index(x)]
            sin = turned.input[1 - side]
            return RotaryInputs(x, _before_unsqueeze(producers, cos), _before_unsqueeze(producers, sin))
    return None


def tables(model: Any, cos: str, sin: str, positions: int, head_dim: int) -> Optional[tuple[Any, Any]]:
    """GroupQueryAttention's cos_cache and sin_cache [positions, head_dim / 2] from the graph's own subgraph
    computing `cos`/`sin` from position_ids; None when that subgraph needs another input or is not the halves-
    repeated (non-interleaved, full-width) layout GroupQueryAttention's rotary computes."""
    import numpy as np
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {init.name: init for init in graph.initializer}
    nodes, needed, seen = [], [cos, sin], set()
    while needed:  # the nodes between position_ids and cos/sin
        tensor = needed.pop()
        if tensor in initializers or tensor in ("", "position_ids"):
            continue
        node = producers.get(tensor)
        if node is None:  # another graph input
            return None
        if id(node) not in seen:
            seen.add(id(node))
            nodes.append(node)
            needed.extend(node.input)
    order = {id(node): index for index, node in enumerate(graph.node)}
    nodes.sort(key=lambda node: order[id(node)])
    used = {name for node in nodes for name in node.input}
    subgraph = helper.make_graph(
        nodes, "rotary_tables",
        [helper.make_tensor_value_info("position_ids", 7, [1, positions])],
        [helper.make_tensor_value_info(cos, 1, None), helper.make_tensor_value_info(sin, 1, None)],
        [initializers[name] for name in used if name in initializers])
    sub = helper.make_model(subgraph, opset_imports=list(model.opset_import))
    cos_value, sin_value = ReferenceEvaluator(sub).run(
        None, {"position_ids": np.arange(positions, dtype=np.int64)[None]})
    half = head_dim // 2
    if cos_value.shape != (1, positions, head_dim) or sin_value.shape != cos_value.shape:
        return None
    if not (np.allclose(cos_value[..., :half], cos_value[..., half:])
            and np.allclose(sin_value[..., :half], sin_value[..., half:])):
        return None
    return (np.ascontiguousarray(cos_value[0, :, :half], dtype=np.float32),
            np.ascontiguousarray(sin_value[0, :, :half], dtype=np.float32))
