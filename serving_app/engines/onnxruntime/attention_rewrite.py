"""Rewrite an Optimum-exported decoder so its KV cache is updated in place.

Optimum's graph appends each step's key/value to the past with a Concat (past -> present), so every decode step
copies the whole cache, and attends over a left-padded past. Here each layer's attention (the two Concats, Q.K^T,
mask, softmax, P.V) is replaced by ONNX Runtime's GroupQueryAttention, which writes the new key/value into a
preallocated buffer that is both its past and its present input (`past_present_share_buffer`), and attends over
each row's own length (`seqlens_k`, from the attention mask). The caller then keeps one buffer per layer, rows
right-aligned at position 0, and binds it as past and present (`kv_cache.py`). Where the export's rotary embedding
has Hugging Face's form, GroupQueryAttention applies it too (`rotary.py`), and `position_ids` goes unused.

Inputs and outputs keep their names; what changes is the contract: `attention_mask` is right-padded (row b has
ones for its cached tokens plus the new ones, then zeros), `past_key_values.*` are the shared buffers (their time
axis is the buffer's capacity, not the past length), and `logits` is [batch, 1, vocab]: each row's last real
position only (a prefill's full [batch, prompt, vocab] would be gigabytes with a 128k vocabulary, and the
lm_head work for every prompt position is wasted). `onnx` is imported by callers in the ONNX image only.
"""

from __future__ import annotations

from typing import Any, Optional

from . import rotary

KV_CACHE_LAYOUT = "shared-buffer"  # recorded in the artifact's marker; engines refuse other layouts
# What the rewrite makes of the graph, also in the marker: a startup conversion cached under an older one is
# made again (a directory converted by hand keeps serving; it has the same inputs and outputs).
GRAPH_REWRITE = "gqa-rotary"


class AttentionRewriteError(RuntimeError):
    """The exported graph does not have the attention pattern this rewrite knows."""


def _constant_value(graph: Any, name: str) -> Optional[float]:
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            value = numpy_helper.to_array(init)
            return float(value.reshape(-1)[0]) if value.size == 1 else None
    for node in graph.node:
        if node.op_type == "Constant" and name in node.output:
            for attribute in node.attribute:
                if attribute.name == "value":
                    value = numpy_helper.to_array(attribute.t)
                    return float(value.reshape(-1)[0]) if value.size == 1 else None
                if attribute.name == "value_float":
                    return float(attribute.f)
    return None


def _scale_of(graph: Any, producers: dict[str, Any], tensor: str) -> tuple[str, float]:
    """Follow `tensor` back through Mul-by-constant nodes: (the unscaled tensor, the product of the constants)."""
    scale = 1.0
    while tensor in producers and producers[tensor].op_type == "Mul":
        node = producers[tensor]
        factors = [_constant_value(graph, name) for name in node.input]
        if factors[1] is not None:
            tensor, factor = node.input[0], factors[1]
        elif factors[0] is not None:
            tensor, factor = node.input[1], factors[0]
        else:
            break
        scale *= factor
    return tensor, scale


def _skip_transpose(producers: dict[str, Any], tensor: str) -> tuple[str, bool]:
    """The [batch, seq, heads, head_dim] tensor a [batch, heads, seq, head_dim] one was transposed from, if so."""
    node = producers.get(tensor)
    if node is not None and node.op_type == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if perm == [0, 2, 1, 3]:
            return node.input[0], True
    return tensor, False


def _to_bsh(producers: dict[str, Any], new_nodes: list[Any], tensor: str, out: str) -> str:
    """Append nodes making `out` = `tensor` [batch, heads, seq, head_dim] as [batch, seq, heads * head_dim] (undoing
    the export's Transpose where there is one); returns `out`."""
    from onnx import helper

    source, was_transposed = _skip_transpose(producers, tensor)
    if was_transposed:  # source is [batch, seq, heads, head_dim] already
        new_nodes.append(helper.make_node("Reshape", [source, "kv/bsh"], [out]))
    else:
        new_nodes.append(helper.make_node("Transpose", [tensor], [f"{out}_t"], perm=[0, 2, 1, 3]))
        new_nodes.append(helper.make_node("Reshape", [f"{out}_t", "kv/bsh"], [out]))
    return out


def rewrite_attention(model: Any, num_heads: int, max_positions: Optional[int] = None) -> int:
    """Rewrite `model` (an onnx.ModelProto, changed in place); returns the number of layers rewritten. With
    `max_positions` (the model's max_position_embeddings) the rotary embedding moves into the attention where the
    graph's matches `rotary.py`'s pattern in every layer."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inputs = {i.name: i for i in graph.input}
    outputs = {o.name for o in graph.output}
    layers = sorted(int(name.split(".")[1]) for name in inputs
                    if name.startswith("past_key_values.") and name.endswith(".key"))
    if not layers:
        raise AttentionRewriteError("the graph has no past_key_values inputs (exported without a KV cache?)")
    if "attention_mask" not in inputs:
        raise AttentionRewriteError("the graph has no attention_mask input")
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def downstream(start: str, op_type: str) -> list[Any]:
        """Nodes of op_type reachable from `start` through data (not Shape), stopping at them (breadth first)."""
        found, seen, frontier = [], set(), [start]
        while frontier:
            tensor = frontier.pop(0)
            for node in consumers.get(tensor, []):
                if id(node) in seen:
                    continue
                seen.add(id(node))
                if node.op_type == "Shape":
                    continue
                if node.op_type == op_type:
                    found.append(node)
                else:
                    frontier.extend(node.output)
        return found

    kv_heads = inputs[f"past_key_values.{layers[0]}.key"].type.tensor_type.shape.dim[1].dim_value
    head_dim = inputs[f"past_key_values.{layers[0]}.key"].type.tensor_type.shape.dim[3].dim_value
    if not kv_heads or not head_dim:
        raise AttentionRewriteError("past_key_values need fixed head and head_dim axes")

    # Shared by every layer: each row's length - 1 and the mask's width, as GroupQueryAttention takes them.
    new_nodes = [
        helper.make_node("Constant", [], ["kv/axis1"], value=helper.make_tensor("kv/axis1_v", 7, [1], [1])),
        helper.make_node("ReduceSum", ["attention_mask", "kv/axis1"], ["kv/lengths"], keepdims=0),
        helper.make_node("Constant", [], ["kv/one"], value=helper.make_tensor("kv/one_v", 7, [], [1])),
        helper.make_node("Sub", ["kv/lengths", "kv/one"], ["kv/last"]),
        helper.make_node("Cast", ["kv/last"], ["kv/seqlens_k"], to=6),
        helper.make_node("Shape", ["attention_mask"], ["kv/mask_shape"], start=1, end=2),
        helper.make_node("Constant", [], ["kv/scalar"], value=helper.make_tensor("kv/scalar_v", 7, [0], [])),
        helper.make_node("Reshape", ["kv/mask_shape", "kv/scalar"], ["kv/width"]),
        helper.make_node("Cast", ["kv/width"], ["kv/total_sequence_length"], to=6),
        helper.make_node("Constant", [], ["kv/bsh"], value=helper.make_tensor("kv/bsh_v", 7, [3], [0, 0, -1])),
    ]
    removed: set[int] = set()
    found: list[tuple[int, str, str, str, str, float]] = []  # layer, query, key, value, output, scale
    for layer in layers:
        past_k, past_v = f"past_key_values.{layer}.key", f"past_key_values.{layer}.value"
        present_k, present_v = f"present.{layer}.key", f"present.{layer}.value"
        concat_k, concat_v = producers.get(present_k), producers.get(present_v)
        if (concat_k is None or concat_k.op_type != "Concat" or list(concat_k.input)[0] != past_k
                or concat_v is None or concat_v.op_type != "Concat" or list(concat_v.input)[0] != past_v):
            raise AttentionRewriteError(f"layer {layer}: {present_k}/{present_v} are not Concat(past, new)")
        scores = downstream(present_k, "MatMul")
        weighted = downstream(present_v, "MatMul")
        if len(scores) != 1 or len(weighted) != 1:
            raise AttentionRewriteError(f"layer {layer}: expected one Q.K^T and one P.V MatMul")
        score, mix = scores[0], weighted[0]
        query, query_scale = _scale_of(graph, producers, score.input[0])
        # K's side: present -> (repeat kv) -> Transpose -> Mul(scale) -> MatMul; only the scale matters here.
        _, key_scale = _scale_of(graph, producers, score.input[1])
        after = consumers.get(mix.output[0], [])
        if len(after) != 1 or after[0].op_type != "Transpose":
            raise AttentionRewriteError(f"layer {layer}: P.V is not followed by a Transpose")
        reshaped = consumers.get(after[0].output[0], [])
        if len(reshaped) != 1 or reshaped[0].op_type != "Reshape":
            raise AttentionRewriteError(f"layer {layer}: attention output is not reshaped to [batch, seq, hidden]")
        scale = query_scale * key_scale
        scaled = consumers.get(score.output[0], [])
        if scale == 1.0 and len(scaled) == 1 and scaled[0].op_type in ("Div", "Mul"):  # scores scaled after Q.K^T
            factor = _constant_value(graph, scaled[0].input[1])
            if factor is None:
                raise AttentionRewriteError(f"layer {layer}: the attention scale is not a constant")
            scale = 1 / factor if scaled[0].op_type == "Div" else factor
        found.append((layer, query, concat_k.input[1], concat_v.input[1], reshaped[0].output[0], scale))
        removed.update({id(concat_k), id(concat_v), id(reshaped[0])})

    rotary_inputs = _rotary_inputs(model, producers, found, max_positions, head_dim)
    rotations: Optional[dict[str, str]] = None
    if rotary_inputs is not None:
        (cos_cache, sin_cache), rotations = rotary_inputs
        graph.initializer.extend([numpy_helper.from_array(cos_cache, "kv/cos_cache"),
                                  numpy_helper.from_array(sin_cache, "kv/sin_cache")])
    for layer, query, key, value, attention_output, scale in found:
        prefix = f"kv/layer{layer}"
        if rotations is not None:  # GroupQueryAttention rotates them itself
            query, key = rotations[query], rotations[key]
        q, k, v = (_to_bsh(producers, new_nodes, tensor, f"{prefix}/{name}")
                   for tensor, name in ((query, "q"), (key, "k"), (value, "v")))
        inputs = [q, k, v, f"past_key_values.{layer}.key", f"past_key_values.{layer}.value", "kv/seqlens_k",
                  "kv/total_sequence_length"]
        rotation = {}
        if rotations is not None:
            inputs += ["kv/cos_cache", "kv/sin_cache"]
            rotation = {"do_rotary": 1, "rotary_interleaved": 0}
        new_nodes.append(helper.make_node(
            "GroupQueryAttention", inputs,
            [attention_output, f"present.{layer}.key", f"present.{layer}.value"],
            domain="com.microsoft", name=f"{prefix}/GroupQueryAttention",
            num_heads=num_heads, kv_num_heads=kv_heads, scale=scale, **rotation,
        ))

    new_nodes += _keep_last_position_logits(graph, producers)
    kept = [node for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(kept + new_nodes)
    _drop_unused(graph, outputs)
    _sort_topologically(graph)
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(layers)


def _rotary_inputs(model: Any, producers: dict[str, Any], found: list[tuple[int, str, str, str, str, float]],
                   max_positions: Optional[int], head_dim: int) -> Optional[tuple[tuple[Any, Any], dict[str, str]]]:
    """((cos_cache, sin_cache), {rotated query/key: its unrotated tensor}) when every layer's query and key are
    rotated the same way with one cos/sin pair; None keeps the graph's own rotary."""
    if not max_positions:
        return None
    matches = {tensor: rotary.find(producers, tensor) for _, query, key, _, _, _ in found for tensor in (query, key)}
    if any(match is None for match in matches.values()):
        return None
    pairs = {(match.cos, match.sin) for match in matches.values()}
    if len(pairs) != 1:
        return None
    tables = rotary.tables(model, *pairs.pop(), max_positions, head_dim)
    if tables is None:
        return None
    return tables, {tensor: match.unrotated for tensor, match in matches.items()}


def _keep_last_position_logits(graph: Any, producers: dict[str, Any]) -> list[Any]:
    """Nodes that pick each row's last real position before lm_head: index min(seqlens_k, new tokens - 1), i.e. the
    prompt's last token when prefilling (right-padded, nothing cached) and the one new token when decoding."""
    from onnx import helper

    weights = {init.name: list(init.dims) for init in graph.initializer}
    tensor, lm_head = "logits", None
    while tensor in producers:  # back from the output to the first weight MatMul: lm_head
        node = producers[tensor]
        if node.op_type in ("MatMul", "MatMulInteger") and len(weights.get(node.input[1], [])) == 2:
            lm_head = node
            break
        tensor = node.input[0]
    if lm_head is None:
        raise AttentionRewriteError("no lm_head MatMul found before the logits output")
    # int8: lm_head reads DynamicQuantizeLinear(hidden); pick the rows before quantizing, so the scale is theirs.
    quantize = producers.get(lm_head.input[0])
    reader = quantize if quantize is not None and quantize.op_type == "DynamicQuantizeLinear" else lm_head
    hidden = reader.input[0]
    nodes = [
        helper.make_node("Shape", ["input_ids"], ["kv/new_tokens"], start=1, end=2),
        helper.make_node("Constant", [], ["kv/one_1d"], value=helper.make_tensor("kv/one_1d_v", 7, [1], [1])),
        helper.make_node("Sub", ["kv/new_tokens", "kv/one_1d"], ["kv/last_new"]),
        helper.make_node("Cast", ["kv/seqlens_k"], ["kv/seqlens_k64"], to=7),
        helper.make_node("Min", ["kv/seqlens_k64", "kv/last_new"], ["kv/pick"]),
        helper.make_node("Constant", [], ["kv/pick_shape"], value=helper.make_tensor("kv/pick_shape_v", 7, [3],
                                                                                     [-1, 1, 1])),
        helper.make_node("Reshape", ["kv/pick", "kv/pick_shape"], ["kv/pick_3d"]),
        helper.make_node("Shape", [hidden], ["kv/hidden_shape"]),
        helper.make_node("Constant", [], ["kv/one_row"], value=helper.make_tensor("kv/one_row_v", 7, [3], [1, 0, 1])),
        helper.make_node("Constant", [], ["kv/zero_row"], value=helper.make_tensor("kv/zero_row_v", 7, [3], [0, 1, 0])),
        helper.make_node("Mul", ["kv/hidden_shape", "kv/one_row"], ["kv/pick_dims0"]),
        helper.make_node("Add", ["kv/pick_dims0", "kv/zero_row"], ["kv/pick_dims"]),  # [batch, 1, hidden]
        helper.make_node("Expand", ["kv/pick_3d", "kv/pick_dims"], ["kv/pick_index"]),
        helper.make_node("GatherElements", [hidden, "kv/pick_index"], ["kv/last_hidden"], axis=1),
    ]
    reader.input[0] = "kv/last_hidden"
    return nodes


def _drop_unused(graph: Any, outputs: set[str]) -> None:
    """Remove nodes (and initializers) nothing reachable from the outputs uses: the old attention and mask."""
    producers = {out: node for node in graph.node for out in node.output}
    needed, frontier, live = set(), list(outputs), set()
    while frontier:
        tensor = frontier.pop()
        if tensor in needed:
            continue
        needed.add(tensor)
        node = producers.get(tensor)
        if node is not None and id(node) not in live:
            live.add(id(node))
            frontier.extend(name for name in node.input if name)
            for attribute in node.attribute:  # subgraphs' outer-scope inputs
                for body in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                    frontier.extend(name for sub in body.node for name in sub.input if name)
    kept = [node for node in graph.node if id(node) in live]
    del graph.node[:]
    graph.node.extend(kept)
    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def _sort_topologically(graph: Any) -> None:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            raise AttentionRewriteError("the rewritten graph has a cycle or a missing input")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        ready_ids = {id(node) for node in ready}
        pending = [node for node in pending if id(node) not in ready_ids]
    del graph.node[:]
    graph.node.extend(ordered)
