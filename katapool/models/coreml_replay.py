"""The ML Program inside a saved ``.mlpackage``, replayed with ONNX Runtime.

Core ML cannot run on Linux, but its program can be read: coremltools loads the package's
protobuf and weight blob back into a MIL program with numpy constants. Each MIL op becomes an
ONNX op here. This tests what is in the file — after coremltools' fusions — rather than what
was meant to be written.

FP16 programs: every FP16 tensor of the program is held as FP32 rounded to FP16 after the op
that makes it (a cast to FLOAT16 and back), constants as their FP16 values, so FP16 rounding
and overflow happen where the program has them. Real FP16 tensors would not do that reliably:
ONNX Runtime's CPU provider runs chains of FP16 ops it has no kernels for in FP32, without
rounding in between. Inside one op (a convolution, a sum) the replay accumulates in FP32;
what Apple's hardware accumulates in is not known here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from katapool.errors import ModelError
from katapool.models.export_coreml import import_coremltools, quiet

# Worst relative error (max |replay - ONNX| / max(1, max |ONNX|), per output) export_coreml
# accepts. FP32: fused weights reorder sums, nothing more (measured ≤ 4e-5). FP16: measured
# 1.5e-3 to 3.7e-3 on the test networks and b10c384 (docs/coreml-notes.md); 2e-2 leaves room
# for real positions, and an overflow or a wrong op is far beyond it.
REPLAY_LIMITS = {"fp32": 1e-3, "fp16": 2e-2}
INT64_MAX = np.iinfo(np.int64).max


def load_program(path: Path) -> Any:
    """The package's ML Program as a MIL ``Program`` whose constants hold numpy values."""
    ct = import_coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load

    with quiet():
        model = ct.models.MLModel(str(path), skip_model_load=True)
        spec = model.get_spec()
        if spec.WhichOneof("Type") != "mlProgram":
            raise ModelError(f"{path}: not an ML Program")
        return load(spec, spec.specificationVersion, file_weights_dir=model.weights_dir)


class _Replay:
    """MIL ops -> ONNX nodes, one method per MIL op type."""

    def __init__(self) -> None:
        from coremltools.converters.mil.mil import types
        from onnx import helper

        self.types = types
        self.helper = helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.count = 0
        self.target = ""
        self.handlers: dict[str, Callable[[Any], None]] = {
            "add": self.binary("Add"), "sub": self.binary("Sub"), "mul": self.binary("Mul"),
            "real_div": self.binary("Div"), "maximum": self.binary("Max"),
            "minimum": self.binary("Min"), "pow": self.binary("Pow"),
            "relu": self.unary("Relu"), "sigmoid": self.unary("Sigmoid"),
            "tanh": self.unary("Tanh"), "softplus": self.unary("Softplus"),
            "sqrt": self.unary("Sqrt"), "identity": self.unary("Identity"),
            "exp": self.unary("Exp"), "square": self.square, "silu": self.silu,
            "rsqrt": self.rsqrt, "inverse": self.inverse, "cast": self.cast, "conv": self.conv,
            "linear": self.linear, "matmul": self.matmul, "softmax": self.softmax,
            "reduce_sum": self.reduce("ReduceSum"), "reduce_mean": self.reduce("ReduceMean"),
            "reduce_max": self.reduce("ReduceMax"), "reshape": self.reshape,
            "transpose": self.transpose, "expand_dims": self.expand_dims,
            "squeeze": self.squeeze, "concat": self.concat, "slice_by_index": self.slice,
            "gather": self.gather, "batch_norm": self.batch_norm,
        }

    # --- tensors --------------------------------------------------------------------------------

    def elem(self, dtype: Any) -> int:
        """The ONNX type holding a MIL type: floats of any width as FP32 (see the module)."""
        from onnx import helper

        if self.types.is_float(dtype):
            return int(helper.np_dtype_to_tensor_dtype(np.dtype(np.float32)))
        return int(helper.np_dtype_to_tensor_dtype(np.dtype(self.types.nptype_from_builtin(dtype))))

    def array(self, value: Any, dtype: Any) -> np.ndarray:
        """A MIL constant as the replay holds it: FP16 values exactly, in FP32."""
        array = np.asarray(value, dtype=self.types.nptype_from_builtin(dtype))
        return array.astype(np.float32) if array.dtype == np.float16 else array

    def const(self, value: np.ndarray, base: str = "k") -> str:
        from onnx import numpy_helper

        self.count += 1
        name = f"_{base}{self.count}"
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def ints(self, values: Any) -> str:
        return self.const(np.asarray(values, dtype=np.int64).reshape(-1), "i")

    def tmp(self) -> str:
        self.count += 1
        return f"_t{self.count}"

    def node(self, kind: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(self.helper.make_node(kind, inputs, [output], **attrs))
        return output

    def val(self, op: Any, param: str) -> Any:
        var = op.inputs.get(param)
        return None if var is None else var.val

    def out(self, op: Any) -> str:
        """Where the op's result goes; for an FP16 result, an FP32 tensor that ``add`` then
        rounds to FP16 values."""
        return self.target

    def x(self, op: Any, param: str = "x") -> str:
        return str(op.inputs[param].name)

    def add(self, op: Any) -> None:
        from onnx import TensorProto, numpy_helper

        var = op.outputs[0]
        if op.op_type == "const":
            value = self.array(var.val, var.dtype)
            self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), var.name))
            return
        handler = self.handlers.get(op.op_type)
        if handler is None or len(op.outputs) != 1:
            raise ModelError(f"{op.name}: the replay does not know MIL op {op.op_type}")
        half = var.dtype == self.types.fp16
        self.target = self.tmp() if half else str(var.name)
        handler(op)
        if half:
            rounded = self.node("Cast", [self.target], self.tmp(), to=TensorProto.FLOAT16)
            self.node("Cast", [rounded], str(var.name), to=TensorProto.FLOAT)

    # --- ops ------------------------------------------------------------------------------------

    def binary(self, kind: str) -> Callable[[Any], None]:
        def make(op: Any) -> None:
            self.node(kind, [self.x(op), self.x(op, "y")], self.out(op))
        return make

    def unary(self, kind: str) -> Callable[[Any], None]:
        def make(op: Any) -> None:
            self.node(kind, [self.x(op)], self.out(op))
        return make

    def scalar(self, value: float, like: Any) -> str:
        return self.const(self.array(value, like.dtype))

    def square(self, op: Any) -> None:
        self.node("Mul", [self.x(op), self.x(op)], self.out(op))

    def silu(self, op: Any) -> None:
        self.node("Mul", [self.x(op), self.node("Sigmoid", [self.x(op)], self.tmp())], self.out(op))

    def rsqrt(self, op: Any) -> None:  # 1 / sqrt(x + epsilon)
        eps = self.val(op, "epsilon")
        shifted = self.node("Add", [self.x(op), self.scalar(1e-12 if eps is None else eps, op.x)],
                            self.tmp())
        self.node("Reciprocal", [self.node("Sqrt", [shifted], self.tmp())], self.out(op))

    def inverse(self, op: Any) -> None:  # 1 / (x + epsilon)
        eps = self.val(op, "epsilon")
        shifted = self.node("Add", [self.x(op), self.scalar(1e-4 if eps is None else eps, op.x)],
                            self.tmp())
        self.node("Reciprocal", [shifted], self.out(op))

    def cast(self, op: Any) -> None:
        # To FP16: ``add`` rounds; between float types nothing else changes.
        self.node("Cast", [self.x(op)], self.out(op), to=self.elem(op.outputs[0].dtype))

    def conv(self, op: Any) -> None:
        pad_type = self.val(op, "pad_type") or "valid"
        rank = len(op.weight.shape) - 2
        attrs: dict[str, Any] = {
            "strides": [int(s) for s in (self.val(op, "strides") if self.val(op, "strides")
                                         is not None else [1] * rank)],
            "dilations": [int(d) for d in (self.val(op, "dilations") if self.val(op, "dilations")
                                           is not None else [1] * rank)],
            "group": int(self.val(op, "groups") or 1)}
        if pad_type == "custom":
            pad = [int(p) for p in self.val(op, "pad")]  # begin, end per spatial axis
            attrs["pads"] = pad[0::2] + pad[1::2]  # ONNX: all begins, then all ends
        elif pad_type == "same":
            attrs["auto_pad"] = "SAME_UPPER"
        elif pad_type != "valid":
            raise ModelError(f"{op.name}: the replay does not know pad_type {pad_type}")
        inputs = [self.x(op), self.x(op, "weight")]
        if op.inputs.get("bias") is not None:
            inputs.append(self.x(op, "bias"))
        self.node("Conv", inputs, self.out(op), **attrs)

    def linear(self, op: Any) -> None:  # x @ weight^T + bias
        weight = op.weight.val
        if weight is None:
            raise ModelError(f"{op.name}: linear with a computed weight")
        weight = self.array(weight, op.weight.dtype)
        product = self.node("MatMul", [self.x(op), self.const(np.ascontiguousarray(weight.T))],
                            self.tmp() if op.inputs.get("bias") is not None else self.out(op))
        if op.inputs.get("bias") is not None:
            self.node("Add", [product, self.x(op, "bias")], self.out(op))

    def matmul(self, op: Any) -> None:
        def side(param: str, flag: str) -> str:
            name = self.x(op, param)
            if not self.val(op, flag):
                return name
            rank = len(op.inputs[param].shape)
            perm = [*range(rank - 2), rank - 1, rank - 2]
            return self.node("Transpose", [name], self.tmp(), perm=perm)

        self.node("MatMul", [side("x", "transpose_x"), side("y", "transpose_y")], self.out(op))

    def softmax(self, op: Any) -> None:
        axis = self.val(op, "axis")
        self.node("Softmax", [self.x(op)], self.out(op), axis=int(-1 if axis is None else axis))

    def reduce(self, kind: str) -> Callable[[Any], None]:
        def make(op: Any) -> None:
            axes = self.val(op, "axes")
            keep = int(bool(self.val(op, "keep_dims")))
            inputs = [self.x(op)]
            attrs: dict[str, Any] = {"keepdims": keep}
            if axes is not None:
                if kind == "ReduceSum":  # opset 17: ReduceSum's axes are an input, the others'
                    inputs.append(self.ints(axes))  # an attribute
                else:
                    attrs["axes"] = [int(a) for a in np.asarray(axes).reshape(-1)]
            self.node(kind, inputs, self.out(op), **attrs)
        return make

    def reshape(self, op: Any) -> None:
        shape = self.val(op, "shape")
        if shape is None:
            raise ModelError(f"{op.name}: reshape to a computed shape")
        self.node("Reshape", [self.x(op), self.ints(shape)], self.out(op))

    def transpose(self, op: Any) -> None:
        self.node("Transpose", [self.x(op)], self.out(op),
                  perm=[int(p) for p in self.val(op, "perm")])

    def expand_dims(self, op: Any) -> None:
        self.node("Unsqueeze", [self.x(op), self.ints(self.val(op, "axes"))], self.out(op))

    def squeeze(self, op: Any) -> None:
        axes = self.val(op, "axes")
        inputs = [self.x(op)] + ([self.ints(axes)] if axes is not None else [])
        self.node("Squeeze", inputs, self.out(op))

    def concat(self, op: Any) -> None:
        if self.val(op, "interleave"):
            raise ModelError(f"{op.name}: interleaved concat")
        self.node("Concat", [v.name for v in op.inputs["values"]], self.out(op),
                  axis=int(self.val(op, "axis")))

    def slice(self, op: Any) -> None:
        rank = len(op.x.shape)

        def flags(param: str) -> list[bool]:
            value = self.val(op, param)
            return [False] * rank if value is None else [bool(v) for v in value]

        begin, end = self.val(op, "begin"), self.val(op, "end")
        if begin is None or end is None:
            raise ModelError(f"{op.name}: slice with computed bounds")
        stride = self.val(op, "stride")
        stride = [1] * rank if stride is None else [int(s) for s in stride]
        begin_mask, end_mask, squeeze = flags("begin_mask"), flags("end_mask"), flags("squeeze_mask")
        starts, ends, axes, steps = [], [], [], []
        for i in range(rank):
            if begin_mask[i] and end_mask[i] and not squeeze[i] and stride[i] == 1:
                continue  # the whole axis
            if stride[i] < 1:
                raise ModelError(f"{op.name}: the replay takes forward slices only")
            start = 0 if begin_mask[i] else int(begin[i])
            stop = start + 1 if squeeze[i] else INT64_MAX if end_mask[i] else int(end[i])
            starts.append(start)
            ends.append(stop)
            axes.append(i)
            steps.append(stride[i])
        target = self.tmp() if any(squeeze) else self.out(op)
        if axes:
            self.node("Slice", [self.x(op), self.ints(starts), self.ints(ends), self.ints(axes),
                                self.ints(steps)], target)
        else:
            self.node("Identity", [self.x(op)], target)
        if any(squeeze):
            self.node("Squeeze", [target, self.ints([i for i in range(rank) if squeeze[i]])],
                      self.out(op))

    def gather(self, op: Any) -> None:
        if self.val(op, "batch_dims"):
            raise ModelError(f"{op.name}: gather with batch_dims")
        axis = self.val(op, "axis")
        indices = self.val(op, "indices")  # newer targets store them as uint16 or int8
        index = self.ints(indices) if indices is not None and np.ndim(indices) == 1 else \
            self.node("Cast", [self.x(op, "indices")], self.tmp(), to=7)  # INT64
        self.node("Gather", [self.x(op), index], self.out(op), axis=int(0 if axis is None else axis))

    def batch_norm(self, op: Any) -> None:
        channels = op.mean.shape[0]
        gamma = self.x(op, "gamma") if op.inputs.get("gamma") is not None \
            else self.const(np.ones(channels, dtype=np.float32))
        beta = self.x(op, "beta") if op.inputs.get("beta") is not None \
            else self.const(np.zeros(channels, dtype=np.float32))
        eps = self.val(op, "epsilon")
        self.node("BatchNormalization", [self.x(op), gamma, beta, self.x(op, "mean"),
                                         self.x(op, "variance")], self.out(op),
                  epsilon=float(1e-5 if eps is None else eps))


def replay_onnx(program: Any) -> Any:
    """The MIL program's main function as an ONNX model (opset 17)."""
    from onnx import helper

    main = program.functions["main"]
    replay = _Replay()
    for op in main.operations:
        replay.add(op)

    def info(var: Any) -> Any:
        dims = [d if isinstance(d, int) else "batch" for d in var.shape]
        return helper.make_tensor_value_info(var.name, replay.elem(var.dtype), dims)

    graph = helper.make_graph(replay.nodes, "coreml_replay", [info(v) for v in main.inputs.values()],
                              [info(v) for v in main.outputs], replay.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="katapool-coreml-replay")
    model.ir_version = 8
    return model


def _session(proto: Any) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Run the ops as written: no fusions that would skip an FP16 rounding.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def run_onnx(proto: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = _session(proto)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def replay(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The saved package's outputs on ``feeds`` (FP32 arrays keyed by input name)."""
    return run_onnx(replay_onnx(load_program(path)), feeds)


def relative_errors(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float]:
    """Per output: max |got - ref| / max(1, max |ref|) (inf for a missing or misshapen output,
    NaN is treated as inf)."""
    errors: dict[str, float] = {}
    for name, want in ref.items():
        have = got.get(name)
        if have is None or have.shape != want.shape:
            errors[name] = float("inf")
            continue
        diff = np.abs(have.astype(np.float64) - want.astype(np.float64))
        worst = float(np.max(diff)) if diff.size else 0.0
        errors[name] = worst / max(1.0, float(np.max(np.abs(want)))) if np.isfinite(worst) \
            else float("inf")
    return errors


def position_feeds(inputs: list[tuple[str, tuple[int, ...]]], batch: int,
                   seed: int = 1) -> dict[str, np.ndarray]:
    """Synthetic positions for ``inputs`` (name, shape with the batch first): random stones on
    boards of several sizes in the corner of the buffer (so that the mask matters), small
    global features; meta features random."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for name, shape in inputs:
        full = (batch, *shape[1:])
        if name == "InputSpatial":
            value = (rng.random(full) < 0.15).astype(np.float32)
            height, width = full[2], full[3]
            for i in range(batch):
                side = [height, 13, 9, 7][i % 4]
                mask = np.zeros((height, width), dtype=np.float32)
                mask[:min(side, height), :min(side, width)] = 1.0
                value[i] *= mask
                value[i, 0] = mask
        elif name == "InputGlobal":
            value = (rng.random(full) < 0.2).astype(np.float32)
            if full[1] > 5:
                value[:, 5] = -0.5  # komi 7.5 for White, as the engine encodes it
        else:
            value = rng.standard_normal(full).astype(np.float32) * 0.5
        feeds[name] = value
    return feeds


def compare_with_onnx(path: Path, proto: Any, batch: int = 3, seed: int = 1) -> dict[str, float]:
    """Relative errors (``relative_errors``) of the saved package's replay against the ONNX
    export ``proto`` it was written from, on synthetic positions."""
    from onnx import shape_inference

    inputs = []
    for item in shape_inference.infer_shapes(proto).graph.input:
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1
                     for d in item.type.tensor_type.shape.dim)
        inputs.append((item.name, dims))
    feeds = position_feeds(inputs, batch, seed)
    return relative_errors(replay(path, feeds), run_onnx(proto, feeds))
