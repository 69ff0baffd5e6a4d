"""The structure of a KataGo network (model versions 3–17), parsed from its file.

Follows the grammar KataGo's own reader uses (``cpp/neuralnet/desc.cpp``): a header, a trunk of
residual blocks (ordinary, global-pooling, nested bottleneck, transformer attention and
feed-forward), a trunk tip, a policy head and a value head. Weights stay in the file's
layouts: convolutions ``[kY, kX, inC, outC]``, matrix multiplies ``[inC, outC]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from katapool.errors import ModelError
from katapool.models.reader import OLDEST_VERSION, ModelFile, TokenReader, open_model_file, read_header

NEWEST_VERSION = 17
ACTIVATIONS = {"ACTIVATION_IDENTITY": "identity", "ACTIVATION_RELU": "relu",
               "ACTIVATION_MISH": "mish", "ACTIVATION_SILU": "silu"}
# Post-processing multipliers of models before version 13 (which do not store them).
DEFAULT_POSTPROCESS = (20.0, 20.0, 20.0, 20.0, 40.0, 0.25, 30.0)


@dataclass
class Conv:
    name: str
    weights: np.ndarray  # [kY, kX, inC, outC]
    dilation: tuple[int, int]

    @property
    def in_channels(self) -> int:
        return int(self.weights.shape[2])

    @property
    def out_channels(self) -> int:
        return int(self.weights.shape[3])


@dataclass
class Norm:
    """Batch norm (or a bias-only "norm"): y = (x - mean) * scale / sqrt(var + eps) + bias."""

    name: str
    epsilon: float
    mean: np.ndarray
    variance: np.ndarray
    scale: np.ndarray | None
    bias: np.ndarray | None

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    def merged(self) -> tuple[np.ndarray, np.ndarray]:
        """(multiplier, offset) with y = x * multiplier + offset."""
        scale = self.scale if self.scale is not None else np.ones_like(self.mean)
        bias = self.bias if self.bias is not None else np.zeros_like(self.mean)
        mult = scale / np.sqrt(self.variance.astype(np.float64) + self.epsilon)
        return mult.astype(np.float32), (bias - self.mean * mult).astype(np.float32)


@dataclass
class RMSNorm:
    """Trunk-tip RMSNorm: per position over channels, or (``spatial``) over channels and board."""

    name: str
    epsilon: float
    spatial: bool
    gamma: np.ndarray
    beta: np.ndarray


@dataclass
class TransformerNorm:
    name: str
    epsilon: float
    weight: np.ndarray


@dataclass
class MatMul:
    name: str
    weights: np.ndarray  # [inC, outC]


@dataclass
class MatBias:
    name: str
    weights: np.ndarray


@dataclass
class OrdinaryBlock:
    name: str
    pre_norm: Norm
    pre_act: str
    conv1: Conv
    mid_norm: Norm
    mid_act: str
    conv2: Conv
    kind: str = "ordinary"


@dataclass
class GPoolBlock:
    name: str
    pre_norm: Norm
    pre_act: str
    regular_conv: Conv
    gpool_conv: Conv
    gpool_norm: Norm
    gpool_act: str
    gpool_to_bias: MatMul
    mid_norm: Norm
    mid_act: str
    final_conv: Conv
    kind: str = "gpool"


@dataclass
class NestedBottleneckBlock:
    name: str
    pre_norm: Norm
    pre_act: str
    pre_conv: Conv
    blocks: list[Block]
    post_norm: Norm
    post_act: str
    post_conv: Conv
    kind: str = "nested_bottleneck"


@dataclass
class AttentionBlock:
    name: str
    heads: int
    kv_heads: int
    q_head_dim: int
    v_head_dim: int
    rope: str  # "none", "fixed" or "learnable"
    norm: TransformerNorm
    q: MatMul
    k: MatMul
    v: MatMul
    out: MatMul
    rope_theta: float = 0.0
    rope_freqs: np.ndarray | None = None  # [kvHeads, qHeadDim/2, 2]: (wx, wy)
    kind: str = "attention"


@dataclass
class FFNBlock:
    name: str
    channels: int
    ffn_channels: int
    swiglu: bool
    norm: TransformerNorm
    linear1: MatMul
    gate: MatMul | None
    linear2: MatMul
    kind: str = "ffn"


Block = OrdinaryBlock | GPoolBlock | NestedBottleneckBlock | AttentionBlock | FFNBlock


@dataclass
class MetaEncoder:
    name: str
    in_channels: int
    mul1: MatMul
    bias1: MatBias
    act1: str
    mul2: MatMul
    bias2: MatBias
    act2: str
    mul3: MatMul


@dataclass
class Trunk:
    name: str
    channels: int
    mid_channels: int
    regular_channels: int
    gpool_channels: int
    norm_kind: int  # 0: batch norm tip, 1: RMSNorm tip
    initial_conv: Conv
    initial_matmul: MatMul
    meta: MetaEncoder | None
    blocks: list[Block]
    tip_norm: Norm | RMSNorm
    tip_act: str


@dataclass
class PolicyHead:
    name: str
    out_channels: int
    p1_conv: Conv
    g1_conv: Conv
    g1_norm: Norm
    g1_act: str
    gpool_to_bias: MatMul
    p1_norm: Norm
    p1_act: str
    p2_conv: Conv
    gpool_to_pass: MatMul
    pass_bias: MatBias | None = None  # v >= 15: pass logit from a small MLP
    pass_act: str | None = None
    gpool_to_pass2: MatMul | None = None


@dataclass
class ValueHead:
    name: str
    v1_conv: Conv
    v1_norm: Norm
    v1_act: str
    v2_mul: MatMul
    v2_bias: MatBias
    v2_act: str
    v3_mul: MatMul
    v3_bias: MatBias
    sv3_mul: MatMul
    sv3_bias: MatBias
    ownership_conv: Conv


@dataclass
class ModelDesc:
    name: str
    version: int
    spatial_inputs: int
    global_inputs: int
    postprocess: tuple[float, ...]
    meta_encoder_version: int
    trunk: Trunk
    policy: PolicyHead
    value: ValueHead
    source: ModelFile
    floats_stored: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def meta_inputs(self) -> int:
        return 192 if self.meta_encoder_version > 0 else 0

    @property
    def score_channels(self) -> int:
        return int(self.value.sv3_mul.weights.shape[1])


def load_model(path: Path | str) -> ModelDesc:
    """Parse a model file (``.bin.gz``, ``.bin``, ``.txt.gz``, ``.txt``)."""
    source = open_model_file(Path(path))
    return _Parser(TokenReader(source), source).model()


class _Parser:
    def __init__(self, r: TokenReader, source: ModelFile) -> None:
        self.r = r
        self.source = source
        self.version = 0

    def _check(self, ok: bool, message: str) -> None:
        if not ok:
            raise ModelError(f"{self.source.path}: {message}")

    # --- layers -----------------------------------------------------------------------------

    def conv(self) -> Conv:
        r = self.r
        name = r.token("a convolution name")
        ky, kx, cin, cout = (r.integer(f"{name}: size") for _ in range(4))
        dy, dx = r.integer(f"{name}: dilation"), r.integer(f"{name}: dilation")
        self._check(min(ky, kx, cin, cout, dy, dx) > 0 and ky % 2 == 1 and kx % 2 == 1,
                    f"{name}: bad convolution shape {ky}x{kx} {cin}->{cout} dilation {dy},{dx}")
        weights = r.floats(ky * kx * cin * cout, name).reshape(ky, kx, cin, cout)
        return Conv(name, weights, (dy, dx))

    def norm(self) -> Norm:
        r = self.r
        name = r.token("a norm name")
        channels = r.integer(f"{name}: channels")
        eps = r.number(f"{name}: epsilon")
        has_scale, has_bias = r.integer(f"{name}: hasScale"), r.integer(f"{name}: hasBias")
        self._check(channels > 0 and eps > 0 and np.isfinite(eps), f"{name}: bad norm header")
        mean = r.floats(channels, name)
        var = r.floats(channels, name)
        scale = r.floats(channels, name) if has_scale else None
        bias = r.floats(channels, name) if has_bias else None
        return Norm(name, eps, mean, var, scale, bias)

    def act(self) -> str:
        r = self.r
        name = r.token("an activation name")
        if self.version < 11:
            return "relu"
        kind = r.token(f"{name}: activation kind")
        self._check(kind in ACTIVATIONS, f"{name}: unknown activation {kind}")
        return ACTIVATIONS[kind]

    def matmul(self) -> MatMul:
        r = self.r
        name = r.token("a matmul name")
        cin, cout = r.integer(f"{name}: inC"), r.integer(f"{name}: outC")
        self._check(cin > 0 and cout > 0, f"{name}: bad matmul shape {cin}x{cout}")
        return MatMul(name, r.floats(cin * cout, name).reshape(cin, cout))

    def matbias(self) -> MatBias:
        r = self.r
        name = r.token("a bias name")
        channels = r.integer(f"{name}: channels")
        self._check(channels > 0, f"{name}: bad bias size")
        return MatBias(name, r.floats(channels, name))

    def tnorm(self) -> TransformerNorm:
        r = self.r
        name = r.token("a transformer norm name")
        channels = r.integer(f"{name}: channels")
        eps = r.number(f"{name}: epsilon")
        self._check(channels > 0 and 0 < eps <= 1, f"{name}: bad RMSNorm header")
        return TransformerNorm(name, eps, r.floats(channels, name))

    def rmsnorm(self) -> RMSNorm:
        r = self.r
        name = r.token("an RMSNorm name")
        channels = r.integer(f"{name}: channels")
        eps = r.number(f"{name}: epsilon")
        spatial = r.integer(f"{name}: spatial") != 0
        group = r.integer(f"{name}: cgroupSize")
        self._check(channels > 0 and 0 < eps <= 1 and group == 0, f"{name}: bad RMSNorm header")
        return RMSNorm(name, eps, spatial, r.floats(channels, name), r.floats(channels, name))

    # --- blocks -----------------------------------------------------------------------------

    def blocks(self, count: int, channels: int, where: str) -> list[Block]:
        out: list[Block] = []
        for _ in range(count):
            kind = self.r.token(f"{where}: a block kind")
            block: Block
            if kind == "ordinary_block":
                name = self.r.token("a block name")
                block = OrdinaryBlock(name, self.norm(), self.act(), self.conv(), self.norm(),
                                      self.act(), self.conv())
                ins, outs = block.conv1.in_channels, block.conv2.out_channels
            elif kind == "gpool_block":
                name = self.r.token("a block name")
                block = GPoolBlock(name, self.norm(), self.act(), self.conv(), self.conv(), self.norm(),
                                   self.act(), self.matmul(), self.norm(), self.act(), self.conv())
                ins, outs = block.regular_conv.in_channels, block.final_conv.out_channels
                self._check(block.gpool_to_bias.weights.shape[0] == 3 * block.gpool_norm.channels,
                            f"{name}: gpool matmul does not take 3 x gpool channels")
            elif kind == "nested_bottleneck_block":
                name = self.r.token("a block name")
                inner = self.r.integer(f"{name}: inner blocks")
                self._check(inner > 0, f"{name}: no inner blocks")
                pre_norm, pre_act, pre_conv = self.norm(), self.act(), self.conv()
                inner_blocks = self.blocks(inner, pre_conv.out_channels, name)
                block = NestedBottleneckBlock(name, pre_norm, pre_act, pre_conv, inner_blocks,
                                              self.norm(), self.act(), self.conv())
                ins, outs = pre_conv.in_channels, block.post_conv.out_channels
            elif kind == "transformer_attention_block":
                block = self.attention()
                ins, outs = block.q.weights.shape[0], block.out.weights.shape[1]
            elif kind == "transformer_ffn_block":
                block = self.ffn()
                ins = outs = block.channels
            else:
                raise ModelError(f"{self.source.path}: {where}: unknown block kind {kind[:40]!r} "
                                 "(a newer model than katapool knows?)")
            self._check(ins == channels and outs == channels,
                        f"{block.name}: takes {ins} and gives {outs} channels, the trunk has {channels}")
            out.append(block)
        return out

    def attention(self) -> AttentionBlock:
        r = self.r
        name = r.token("a block name")
        heads, kv, dq, dv = (r.integer(f"{name}: heads/dims") for _ in range(4))
        use_rope, learnable = r.integer(f"{name}: useRope") != 0, r.integer(f"{name}: learnableRope") != 0
        self._check(heads > 0 and kv > 0 and heads % kv == 0 and dq > 0 and dv > 0
                    and (not use_rope or dq % 2 == 0), f"{name}: bad attention header")
        norm, q, k, v, out = self.tnorm(), self.matmul(), self.matmul(), self.matmul(), self.matmul()
        self._check(q.weights.shape[1] == heads * dq and k.weights.shape[1] == kv * dq
                    and v.weights.shape[1] == kv * dv and out.weights.shape[0] == heads * dv,
                    f"{name}: projection shapes do not match the heads")
        block = AttentionBlock(name, heads, kv, dq, dv, "none", norm, q, k, v, out)
        if use_rope and learnable:
            fname = r.token(f"{name}: rope name")
            nkv, pairs, two = r.integer(fname), r.integer(fname), r.integer(fname)
            self._check(nkv == kv and pairs == dq // 2 and two == 2, f"{fname}: bad RoPE shape")
            block.rope = "learnable"
            block.rope_freqs = r.floats(nkv * pairs * 2, fname).reshape(nkv, pairs, 2)
        elif use_rope:
            r.token(f"{name}: rope theta name")
            block.rope = "fixed"
            block.rope_theta = r.number(f"{name}: rope theta")
            self._check(block.rope_theta > 0, f"{name}: RoPE theta must be positive")
        return block

    def ffn(self) -> FFNBlock:
        r = self.r
        name = r.token("a block name")
        channels, ffn_channels = r.integer(f"{name}: channels"), r.integer(f"{name}: ffn channels")
        swiglu = r.integer(f"{name}: useSwiGLU") != 0
        norm, linear1 = self.tnorm(), self.matmul()
        gate = self.matmul() if swiglu else None
        linear2 = self.matmul()
        self._check(linear1.weights.shape == (channels, ffn_channels)
                    and linear2.weights.shape == (ffn_channels, channels), f"{name}: bad FFN shapes")
        return FFNBlock(name, channels, ffn_channels, swiglu, norm, linear1, gate, linear2)

    # --- model ------------------------------------------------------------------------------

    def model(self) -> ModelDesc:
        r = self.r
        head = read_header(r)
        name, version, spatial, global_ = head.name, head.version, head.spatial_inputs, \
            head.global_inputs
        self.version = version
        if version > NEWEST_VERSION:
            raise ModelError(f"{self.source.path}: model version {version} is not supported "
                             f"(katapool reads versions {OLDEST_VERSION} to {NEWEST_VERSION})")
        post = tuple(r.number("a post-processing multiplier") for _ in range(7)) \
            if version >= 13 else DEFAULT_POSTPROCESS
        meta_version = 0
        extra: dict[str, int] = {}
        if version >= 15:
            meta_version = r.integer("metaEncoderVersion")
            extra["preferPassAliveUnderSuicide"] = r.integer("a header flag")
            for _ in range(6):
                r.integer("a reserved header integer")
        trunk = self.trunk(meta_version, spatial, global_)
        policy = self.policy()
        value = self.value()
        self._check(r.at_end(), "data after the value head")
        return ModelDesc(name, version, spatial, global_, post, meta_version, trunk, policy, value,
                         self.source, r.floats_read, extra)

    def trunk(self, meta_version: int, spatial: int, global_: int) -> Trunk:
        r = self.r
        name = r.token("the trunk name")
        count = r.integer("trunk blocks")
        channels, mid = r.integer("trunk channels"), r.integer("mid channels")
        regular = r.integer("regular channels")
        r.integer("dilated channels")
        gpool = r.integer("gpool channels")
        norm_kind = 0
        if self.version >= 15:
            norm_kind = r.integer("trunk norm kind")
            for _ in range(5):
                r.integer("a reserved trunk integer")
        self._check(count > 0 and channels > 0 and norm_kind in (0, 1), f"{name}: bad trunk header")
        initial_conv, initial_matmul = self.conv(), self.matmul()
        self._check(initial_conv.in_channels == spatial and initial_conv.out_channels == channels
                    and initial_matmul.weights.shape == (global_, channels),
                    f"{name}: input layers do not match the inputs")
        meta = None
        if meta_version > 0:
            mname = r.token("the metadata encoder name")
            mc = r.integer(f"{mname}: inputs")
            meta = MetaEncoder(mname, mc, self.matmul(), self.matbias(), self.act(), self.matmul(),
                               self.matbias(), self.act(), self.matmul())
        blocks = self.blocks(count, channels, name)
        tip: Norm | RMSNorm = self.norm() if norm_kind == 0 else self.rmsnorm()
        return Trunk(name, channels, mid, regular, gpool, norm_kind, initial_conv, initial_matmul,
                     meta, blocks, tip, self.act())

    def policy(self) -> PolicyHead:
        r = self.r
        name = r.token("the policy head name")
        v = self.version
        if v >= 17:
            out_channels = r.integer("policy output channels")
            self._check(out_channels in (2, 4), f"{name}: policy output channels must be 2 or 4")
            for _ in range(3):
                r.integer("a reserved policy integer")
        else:
            out_channels = 4 if v == 16 else 2 if v >= 12 else 1
        head = PolicyHead(name, out_channels, self.conv(), self.conv(), self.norm(), self.act(),
                          self.matmul(), self.norm(), self.act(), self.conv(), self.matmul())
        if v >= 15:
            head.pass_bias, head.pass_act, head.gpool_to_pass2 = self.matbias(), self.act(), self.matmul()
        self._check(head.p2_conv.out_channels == out_channels, f"{name}: policy channels mismatch")
        return head

    def value(self) -> ValueHead:
        r = self.r
        name = r.token("the value head name")
        if self.version >= 17:
            for _ in range(3):
                r.integer("a reserved value integer")
        head = ValueHead(name, self.conv(), self.norm(), self.act(), self.matmul(), self.matbias(),
                         self.act(), self.matmul(), self.matbias(), self.matmul(), self.matbias(),
                         self.conv())
        self._check(head.v3_mul.weights.shape[1] == 3, f"{name}: the value output must have 3 channels")
        return head
