"""A parsed KataGo network as one self-contained ONNX graph (opset 17, dynamic batch).

Inputs ``InputSpatial`` [N, C, H, W] and ``InputGlobal`` [N, G] (``InputMeta`` [N, 192] for
human-SL nets); the on-board mask is channel 0 of the spatial input, as in KataGo. Raw outputs
as the engine's own emitter names them: ``OutputPolicyPass`` [N, P], ``OutputPolicy``
[N, P, H, W], ``OutputValue`` [N, 3], ``OutputScoreValue`` [N, S], ``OutputOwnership``
[N, 1, H, W] — logits and pre-activation values from the side to move's view. Channel layouts
and the block semantics follow KataGo (see docs/models.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from katapool.errors import ModelError
from katapool.models.desc import (
    AttentionBlock,
    Block,
    Conv,
    FFNBlock,
    GPoolBlock,
    MatMul,
    ModelDesc,
    NestedBottleneckBlock,
    Norm,
    OrdinaryBlock,
    RMSNorm,
    TransformerNorm,
)

OPSET = 17


class _Graph:
    def __init__(self) -> None:
        from onnx import helper

        self.helper = helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._ids = itertools.count()
        self._scopes: list[str] = []
        self._consts: dict[tuple[str, str, tuple[int, ...], bytes], str] = {}

    @contextlib.contextmanager
    def scope(self, part: str) -> Iterator[None]:
        """Name the nodes made inside by the network part they belong to ("stem",
        "block3/rms", "policy", ...): quantization keeps chosen parts in higher precision."""
        self._scopes.append(part)
        try:
            yield
        finally:
            self._scopes.pop()

    def name(self, base: str) -> str:
        return f"{base}_{next(self._ids)}"

    def const(self, array: np.ndarray, base: str = "c") -> str:
        """An initializer; identical arrays are stored once (RoPE tables repeat per block)."""
        from onnx import numpy_helper

        array = np.ascontiguousarray(array)
        # Shared only within one kind of part (block3 and block7 alike, never stem and trunk):
        # quantization converts an initializer for all its readers at once.
        part = "/".join(s.rstrip("0123456789") for s in self._scopes)
        key = (part, array.dtype.str, array.shape, hashlib.sha256(array.tobytes()).digest())
        if key in self._consts:
            return self._consts[key]
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(array, name))
        self._consts[key] = name
        return name

    def ints(self, values: list[int]) -> str:
        return self.const(np.array(values, dtype=np.int64), "i")

    def op(self, kind: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        name = out or self.name(kind.lower())
        node_name = "/".join([*self._scopes, name])
        self.nodes.append(self.helper.make_node(kind, list(inputs), [name], name=node_name, **attrs))
        return name


class _Builder:
    def __init__(self, model: ModelDesc, board: int, postprocess: bool = False) -> None:
        self.m = model
        self.g = _Graph()
        self.h = self.w = board
        self.postprocess = postprocess

    def postprocessed(self) -> list[Any]:
        """KataGo's post-processing as graph outputs (side to move's view): move+pass
        probabilities (channel 0; no legality in the graph: mask illegal moves yourself and
        renormalise), win/loss/no-result probabilities, score lead and mean (points), score
        stdev, ownership in [-1, 1]."""
        from onnx import TensorProto

        g, helper, m = self.g, self.g.helper, self.m
        f = TensorProto.FLOAT
        board = g.op("Reshape", g.op("Slice", "OutputPolicy", g.ints([0]), g.ints([1]), g.ints([1])),
                     g.ints([0, -1]))
        pass0 = g.op("Slice", "OutputPolicyPass", g.ints([0]), g.ints([1]), g.ints([1]))
        g.op("Softmax", g.op("Concat", board, pass0, axis=1), axis=1, out="Policy")
        g.op("Softmax", "OutputValue", axis=1, out="Value")
        mults = m.postprocess  # td, mean, stdev, lead, ...

        def channel(i: int) -> str:
            return g.op("Slice", "OutputScoreValue", g.ints([i]), g.ints([i + 1]), g.ints([1]))

        def scaled(x: str, k: float) -> str:
            return g.op("Mul", x, g.const(np.array(k, dtype=np.float32)))

        g.op("Identity", scaled(channel(0), mults[1]), out="ScoreMean")
        g.op("Identity", scaled(g.op("Softplus", channel(1)), mults[2]), out="ScoreStdev")
        if m.score_channels > 2:
            g.op("Identity", scaled(channel(2), mults[3]), out="ScoreLead")
        g.op("Tanh", "OutputOwnership", out="Ownership")
        n: Any = "batch"
        outs = [helper.make_tensor_value_info("Policy", f, [n, self.h * self.w + 1]),
                helper.make_tensor_value_info("Value", f, [n, 3]),
                helper.make_tensor_value_info("ScoreMean", f, [n, 1]),
                helper.make_tensor_value_info("ScoreStdev", f, [n, 1]),
                helper.make_tensor_value_info("Ownership", f, [n, 1, self.h, self.w])]
        if m.score_channels > 2:
            outs.append(helper.make_tensor_value_info("ScoreLead", f, [n, 1]))
        return outs

    # --- layers ---------------------------------------------------------------------------------

    def conv(self, x: str, c: Conv) -> str:
        ky, kx = c.weights.shape[:2]
        dy, dx = c.dilation
        weights = c.weights.transpose(3, 2, 0, 1)  # [kY,kX,in,out] -> OIHW
        py, px = dy * (ky - 1) // 2, dx * (kx - 1) // 2
        return self.g.op("Conv", x, self.g.const(weights, "w"), pads=[py, px, py, px],
                         dilations=[dy, dx])

    def norm(self, x: str, n: Norm) -> str:
        mult, offset = n.merged()
        y = self.g.op("Mul", x, self.g.const(mult.reshape(1, -1, 1, 1)))
        return self.g.op("Add", y, self.g.const(offset.reshape(1, -1, 1, 1)))

    def act(self, x: str, kind: str) -> str:
        g = self.g
        if kind == "relu":
            return g.op("Relu", x)
        if kind == "silu":
            return g.op("Mul", x, g.op("Sigmoid", x))
        if kind == "mish":
            return g.op("Mul", x, g.op("Tanh", g.op("Softplus", x)))
        return x

    def masked(self, x: str) -> str:
        return self.g.op("Mul", x, self.mask)

    def nba(self, x: str, n: Norm, kind: str) -> str:
        """Norm, activation, mask: the step before every convolution."""
        return self.masked(self.act(self.norm(x, n), kind))

    def matmul(self, x: str, mm: MatMul) -> str:
        return self.g.op("MatMul", x, self.g.const(mm.weights, "mm"))

    def bias(self, x: str, values: np.ndarray) -> str:
        return self.g.op("Add", x, self.g.const(values))

    def as_spatial_bias(self, x: str) -> str:
        """[N, C] -> [N, C, 1, 1]."""
        return self.g.op("Unsqueeze", x, self.g.ints([2, 3]))

    def gpool(self, x: str) -> str:
        """[mean, mean·(√area−14)/10, max] over the board -> [N, 3C] (x already masked)."""
        g = self.g
        with g.scope("pool"):
            mean = g.op("Div", g.op("ReduceSum", x, g.ints([2, 3]), keepdims=1), self.area)
            scaled = g.op("Mul", mean, self.area_scale)
            shifted = g.op("Add", x, g.op("Sub", self.mask,
                                          g.const(np.array(1.0, dtype=np.float32))))
            mx = g.op("ReduceMax", shifted, axes=[2, 3], keepdims=1)
            return g.op("Flatten", g.op("Concat", mean, scaled, mx, axis=1), axis=1)

    def value_pool(self, x: str) -> str:
        g = self.g
        with g.scope("pool"):
            mean = g.op("Div", g.op("ReduceSum", x, g.ints([2, 3]), keepdims=1), self.area)
            return g.op("Flatten", g.op("Concat", mean, g.op("Mul", mean, self.area_scale),
                                        g.op("Mul", mean, self.area_quad), axis=1), axis=1)

    # --- blocks ---------------------------------------------------------------------------------

    def block(self, x: str, b: Block) -> str:
        g = self.g
        if isinstance(b, OrdinaryBlock):
            y = self.conv(self.nba(x, b.pre_norm, b.pre_act), b.conv1)
            y = self.conv(self.nba(y, b.mid_norm, b.mid_act), b.conv2)
            return g.op("Add", x, y)
        if isinstance(b, GPoolBlock):
            a = self.nba(x, b.pre_norm, b.pre_act)
            regular = self.conv(a, b.regular_conv)
            pooled = self.gpool(self.nba(self.conv(a, b.gpool_conv), b.gpool_norm, b.gpool_act))
            regular = g.op("Add", regular, self.as_spatial_bias(self.matmul(pooled, b.gpool_to_bias)))
            return g.op("Add", x, self.conv(self.nba(regular, b.mid_norm, b.mid_act), b.final_conv))
        if isinstance(b, NestedBottleneckBlock):
            y = self.conv(self.nba(x, b.pre_norm, b.pre_act), b.pre_conv)
            for j, inner in enumerate(b.blocks):
                with g.scope(f"inner{j}"):
                    y = self.block(y, inner)
            return g.op("Add", x, self.conv(self.nba(y, b.post_norm, b.post_act), b.post_conv))
        if isinstance(b, AttentionBlock):
            with g.scope("attn"):
                return g.op("Add", x, self.attention(x, b))
        if isinstance(b, FFNBlock):
            with g.scope("ffn"):
                return g.op("Add", x, self.ffn(x, b))
        raise ModelError(f"{b.name}: cannot export block kind {b.kind}")

    def seq(self, x: str) -> str:
        """[N, C, H, W] -> [N, S, C] for the transformer's position-wise layers."""
        g = self.g
        flat = g.op("Reshape", x, g.ints([0, 0, -1]))
        return g.op("Transpose", flat, perm=[0, 2, 1])

    def unseq(self, x: str) -> str:
        g = self.g
        return g.op("Reshape", g.op("Transpose", x, perm=[0, 2, 1]), g.ints([0, 0, self.h, self.w]))

    def tnorm(self, x: str, n: TransformerNorm) -> str:
        """RMSNorm over channels at each position of [N, S, C], then the mask."""
        g = self.g
        with g.scope("rms"):
            ms = g.op("ReduceMean", g.op("Mul", x, x), axes=[2], keepdims=1)
            rms = g.op("Sqrt", g.op("Add", ms, g.const(np.array(n.epsilon, dtype=np.float32))))
            y = g.op("Mul", g.op("Div", x, rms), g.const(n.weight.reshape(1, 1, -1)))
        return g.op("Mul", y, self.mask_seq)

    def heads(self, x: str, count: int, dim: int) -> str:
        """[N, S, count·dim] -> [N, count, S, dim]."""
        g = self.g
        return g.op("Transpose", g.op("Reshape", x, g.ints([0, 0, count, dim])), perm=[0, 2, 1, 3])

    def rope_tables(self, b: AttentionBlock) -> tuple[np.ndarray, np.ndarray]:
        """cos, sin per (kv head, position, pair) -> [1, Hkv, S, dq] ([1, 1, S, dq] when every
        head shares them) for x·cos + swap(x)·sin with interleaved pairs."""
        pairs = b.q_head_dim // 2
        grid_y, grid_x = np.meshgrid(np.arange(self.h, dtype=np.float64),
                                     np.arange(self.w, dtype=np.float64), indexing="ij")
        ys, xs = grid_y.reshape(-1), grid_x.reshape(-1)  # position s = y·W + x
        if b.rope == "learnable":
            assert b.rope_freqs is not None
            fx = b.rope_freqs[:, :, 0].astype(np.float64)  # [Hkv, pairs]
            fy = b.rope_freqs[:, :, 1].astype(np.float64)
            angle = xs[None, :, None] * fx[:, None, :] + ys[None, :, None] * fy[:, None, :]
        else:
            half = pairs // 2
            dim_half = b.q_head_dim // 2
            p = np.arange(pairs)
            freq = 1.0 / np.power(b.rope_theta, 2.0 * np.where(p < half, p, p - half) / dim_half)
            coord = np.where(p[None, :] < half, ys[:, None], xs[:, None])  # [S, pairs]
            angle = (coord * freq[None, :])[None]  # the same for every head: broadcast
        cos = np.repeat(np.cos(angle), 2, axis=2)  # each pair's angle on both of its channels
        sin = np.repeat(np.sin(angle), 2, axis=2)
        sin[:, :, 0::2] *= -1.0  # y0 = x0·cos − x1·sin; y1 = x1·cos + x0·sin
        return cos[None].astype(np.float32), sin[None].astype(np.float32)

    def attention(self, x: str, b: AttentionBlock) -> str:
        g = self.g
        h = self.tnorm(self.seq(x), b.norm)
        q = self.heads(self.matmul(h, b.q), b.heads, b.q_head_dim)
        k = self.heads(self.matmul(h, b.k), b.kv_heads, b.q_head_dim)
        v = self.heads(self.matmul(h, b.v), b.kv_heads, b.v_head_dim)
        if b.rope != "none":
            cos, sin = self.rope_tables(b)
            swap = np.arange(b.q_head_dim).reshape(-1, 2)[:, ::-1].reshape(-1)
            swap_idx = g.const(swap.astype(np.int64), "swap")
            group = b.heads // b.kv_heads
            q_cos, q_sin = (np.repeat(cos, group, axis=1), np.repeat(sin, group, axis=1)) \
                if cos.shape[1] > 1 else (cos, sin)

            def rope(t: str, c: np.ndarray, s: np.ndarray) -> str:
                swapped = g.op("Gather", t, swap_idx, axis=3)
                return g.op("Add", g.op("Mul", t, g.const(c)), g.op("Mul", swapped, g.const(s)))

            q, k = rope(q, q_cos, q_sin), rope(k, cos, sin)
        if b.heads != b.kv_heads:  # grouped-query attention: each kv head serves a group
            index = g.const(np.repeat(np.arange(b.kv_heads), b.heads // b.kv_heads).astype(np.int64))
            k, v = g.op("Gather", k, index, axis=1), g.op("Gather", v, index, axis=1)
        with g.scope("scores"):  # activation x activation: never quantized
            scores = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2]))
            scores = g.op("Mul", scores, g.const(np.array(1.0 / np.sqrt(b.q_head_dim),
                                                          dtype=np.float32)))
            scores = g.op("Add", scores, self.key_bias)  # off-board keys get no attention
            out = g.op("MatMul", g.op("Softmax", scores, axis=3), v)  # [N, H, S, dv]
        out = g.op("Reshape", g.op("Transpose", out, perm=[0, 2, 1, 3]),
                   g.ints([0, 0, b.heads * b.v_head_dim]))
        out = g.op("Mul", self.matmul(out, b.out), self.mask_seq)
        return self.unseq(out)

    def ffn(self, x: str, b: FFNBlock) -> str:
        g = self.g
        h = self.tnorm(self.seq(x), b.norm)
        a = self.matmul(h, b.linear1)
        if b.gate is None:
            raise ModelError(f"{b.name}: only SwiGLU feed-forward blocks exist in KataGo models")
        hidden = g.op("Mul", self.act(a, "silu"), self.matmul(h, b.gate))
        return self.unseq(g.op("Mul", self.matmul(hidden, b.linear2), self.mask_seq))

    def tip(self, x: str) -> str:
        g = self.g
        t = self.m.trunk
        if isinstance(t.tip_norm, Norm):
            return self.nba(x, t.tip_norm, t.tip_act)
        n: RMSNorm = t.tip_norm
        with g.scope("rms"):
            sq = g.op("Mul", x, x)
            eps = g.const(np.array(n.epsilon, dtype=np.float32))
            if n.spatial:  # one RMS per sample, over channels and the on-board points
                total = g.op("ReduceSum", g.op("Mul", sq, self.mask), g.ints([1, 2, 3]), keepdims=1)
                count = g.op("Mul", self.area,
                             g.const(np.array(float(n.gamma.size), dtype=np.float32)))
                ms = g.op("Div", total, count)
            else:
                ms = g.op("ReduceMean", sq, axes=[1], keepdims=1)
            y = g.op("Div", x, g.op("Sqrt", g.op("Add", ms, eps)))
        y = g.op("Add", g.op("Mul", y, g.const(n.gamma.reshape(1, -1, 1, 1))),
                 g.const(n.beta.reshape(1, -1, 1, 1)))
        return self.masked(self.act(y, t.tip_act))

    # --- the whole network ----------------------------------------------------------------------

    def use_mask(self, mask: str) -> None:
        """The on-board mask [N,1,H,W] and what is derived from it once for every layer."""
        g = self.g
        self.mask = mask
        self.area = g.op("ReduceSum", mask, g.ints([2, 3]), keepdims=1)  # [N,1,1,1]
        root = g.op("Sub", g.op("Sqrt", self.area), g.const(np.array(14.0, dtype=np.float32)))
        self.area_scale = g.op("Mul", root, g.const(np.array(0.1, dtype=np.float32)))
        self.area_quad = g.op("Sub", g.op("Mul", g.op("Mul", root, root),
                                           g.const(np.array(0.01, dtype=np.float32))),
                              g.const(np.array(0.1, dtype=np.float32)))
        self.mask_seq = self.seq(mask)  # [N, S, 1]
        key_mask = g.op("Unsqueeze", g.op("Reshape", mask, g.ints([0, 1, -1])), g.ints([1]))
        self.key_bias = g.op("Mul", g.op("Sub", key_mask, g.const(np.array(1.0, dtype=np.float32))),
                             g.const(np.array(3e4, dtype=np.float32)))  # [N,1,1,S]

    def build(self) -> Any:
        from onnx import TensorProto

        helper, g, m = self.g.helper, self.g, self.m
        n_dim: Any = "batch"
        inputs = [helper.make_tensor_value_info("InputSpatial", TensorProto.FLOAT,
                                                [n_dim, m.spatial_inputs, self.h, self.w]),
                  helper.make_tensor_value_info("InputGlobal", TensorProto.FLOAT,
                                                [n_dim, m.global_inputs])]
        with g.scope("mask"):
            self.use_mask(g.op("Slice", "InputSpatial", g.ints([0]), g.ints([1]), g.ints([1])))
        t = m.trunk
        with g.scope("stem"):
            x = self.conv("InputSpatial", t.initial_conv)
            x = g.op("Add", x, self.as_spatial_bias(self.matmul("InputGlobal", t.initial_matmul)))
            if t.meta is not None:
                inputs.append(helper.make_tensor_value_info("InputMeta", TensorProto.FLOAT,
                                                            [n_dim, t.meta.in_channels]))
                e = t.meta
                h = self.act(self.bias(self.matmul("InputMeta", e.mul1), e.bias1.weights), e.act1)
                h = self.act(self.bias(self.matmul(h, e.mul2), e.bias2.weights), e.act2)
                x = g.op("Add", x, self.as_spatial_bias(self.matmul(h, e.mul3)))
        for i, block in enumerate(t.blocks):
            with g.scope(f"block{i}"):
                x = self.block(x, block)
        with g.scope("tip"):
            x = self.tip(x)
        with g.scope("policy"):
            self.policy_head(x)
        with g.scope("value"):
            self.value_head(x)
        return self.finish(inputs)

    def policy_head(self, x: str) -> None:
        g, m = self.g, self.m
        p = m.policy
        p1 = self.conv(x, p.p1_conv)
        pooled = self.gpool(self.nba(self.conv(x, p.g1_conv), p.g1_norm, p.g1_act))
        p1 = g.op("Add", p1, self.as_spatial_bias(self.matmul(pooled, p.gpool_to_bias)))
        g.op("Identity", self.conv(self.nba(p1, p.p1_norm, p.p1_act), p.p2_conv), out="OutputPolicy")
        passed = self.matmul(pooled, p.gpool_to_pass)
        if p.gpool_to_pass2 is not None and p.pass_bias is not None and p.pass_act is not None:
            passed = self.matmul(self.act(self.bias(passed, p.pass_bias.weights), p.pass_act),
                                 p.gpool_to_pass2)
        g.op("Identity", passed, out="OutputPolicyPass")

    def value_head(self, x: str) -> None:
        g, m = self.g, self.m
        v = m.value
        v1 = self.nba(self.conv(x, v.v1_conv), v.v1_norm, v.v1_act)
        v2 = self.act(self.bias(self.matmul(self.value_pool(v1), v.v2_mul), v.v2_bias.weights),
                      v.v2_act)
        g.op("Identity", self.bias(self.matmul(v2, v.v3_mul), v.v3_bias.weights), out="OutputValue")
        g.op("Identity", self.bias(self.matmul(v2, v.sv3_mul), v.sv3_bias.weights),
             out="OutputScoreValue")
        g.op("Identity", self.conv(v1, v.ownership_conv), out="OutputOwnership")

    def finish(self, inputs: list[Any]) -> Any:
        from onnx import TensorProto

        helper, g, m = self.g.helper, self.g, self.m
        p, n_dim = m.policy, "batch"
        f: Any = TensorProto.FLOAT
        outputs = [helper.make_tensor_value_info("OutputPolicyPass", f, [n_dim, p.out_channels]),
                   helper.make_tensor_value_info("OutputPolicy", f,
                                                 [n_dim, p.out_channels, self.h, self.w]),
                   helper.make_tensor_value_info("OutputValue", f, [n_dim, 3]),
                   helper.make_tensor_value_info("OutputScoreValue", f, [n_dim, m.score_channels]),
                   helper.make_tensor_value_info("OutputOwnership", f, [n_dim, 1, self.h, self.w])]
        if self.postprocess:
            with g.scope("post"):
                outputs += self.postprocessed()
        graph = helper.make_graph(g.nodes, m.name, inputs, outputs, g.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="katapool")
        model.ir_version = 8
        # The fields KataGo's ONNX model-file reader requires (onnxprotoreader.cpp), so that
        # KataGo builds with ONNX/TensorRT backends can load the file as a model.
        from katapool.models.summary import summarize

        config = {k: v for k, v in summarize(m).items() if k in ("trunk", "heads", "inputs")}
        meta = {"name": m.name, "modelVersion": str(m.version),
                "num_spatial_inputs": str(m.spatial_inputs),
                "num_global_inputs": str(m.global_inputs),
                "num_meta_inputs": str(m.meta_inputs), "has_mask": "true",
                "pos_len_x": str(self.w), "pos_len_y": str(self.h),
                "model_config": json.dumps(config, sort_keys=True),
                "producer": "katapool"}
        helper.set_model_props(model, meta)
        return model


def block_graph(block: Block, channels: int, board: int, tip: Any = None) -> Any:
    """One block (or, with ``tip``, a trunk tip) alone as an ONNX model with inputs ``X``
    [N, C, H, W] and ``Mask`` [N, 1, H, W]; for testing each building block on its own."""
    from onnx import TensorProto, helper

    builder = _Builder.__new__(_Builder)
    builder.g, builder.h, builder.w, builder.postprocess = _Graph(), board, board, False
    builder.use_mask("Mask")
    if tip is not None:
        builder.m = tip
        y = builder.tip("X")
    else:
        y = builder.block("X", block)
    builder.g.op("Identity", y, out="Y")
    f = TensorProto.FLOAT
    shape: list[Any] = ["batch", channels, board, board]
    graph = helper.make_graph(builder.g.nodes, "block", [
        helper.make_tensor_value_info("X", f, shape),
        helper.make_tensor_value_info("Mask", f, ["batch", 1, board, board])],
        [helper.make_tensor_value_info("Y", f, shape)], builder.g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def export_onnx(model: ModelDesc, board: int = 19, postprocess: bool = False) -> Any:
    """The network as an ``onnx.ModelProto`` for a ``board`` × ``board`` input (batch dynamic);
    ``postprocess`` adds KataGo's post-processing as extra outputs."""
    if not 2 <= board <= 19:
        raise ModelError(f"board size {board}: KataGo networks take 2 to 19")
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ModelError("ONNX export needs the onnx package: pip install 'katapool[models]'") from None
    return _Builder(model, board, postprocess).build()
