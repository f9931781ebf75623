"""Per-op parity for the ops detectors, flow models, attention blocks and int8 models use (issue 20), as tiny
graphs in ONNX text syntax checked against onnxruntime.

Tolerance: every output within 1e-5 of onnxruntime (max abs diff / max abs value; integer outputs, such as
NonMaxSuppression's indices and the quantised tensors, exactly equal) unless a case states otherwise.
"""
from __future__ import annotations

import numpy as np
import pytest

from test_converter_ops import NUMPY_TO_ONNX, assert_matches_ort, model, r

NUMPY_TO_ONNX.setdefault(np.uint8, "uint8")  # quantised inputs
RNG = np.random.default_rng(20)
CASES: list = []


def case(id_: str, opset: int, body: str, feeds: dict, outputs: str = "float y", inits: str = "") -> None:
    CASES.append(pytest.param(opset, body, feeds, outputs, inits, id=id_))


# RoiAlign: both coordinate modes (and opset 10's implicit one), avg/max, adaptive and fixed sampling grids,
# rois partly or wholly outside the map and of zero size
FEATURES = r(2, 3, 10, 12)
ROIS = np.array([[1.2, 0.5, 7.9, 6.1], [0, 0, 11, 9], [3.3, 2.2, 3.9, 2.8], [-2, -1.5, 13, 11.5], [5, 5, 5, 5]],
                np.float32)
ROI_FEEDS = {"x": FEATURES, "rois": ROIS, "b": np.array([0, 1, 1, 0, 1], np.int64)}
for opset, transform in ((16, "half_pixel"), (16, "output_half_pixel"), (10, None)):
    for mode in ("avg", "max"):
        for ratio in (0, 2):
            attrs = f'mode="{mode}", output_height=3, output_width=4, sampling_ratio={ratio}, spatial_scale=0.8'
            attrs += f', coordinate_transformation_mode="{transform}"' if transform else ""
            case(f"RoiAlign-{opset}-{transform}-{mode}-ratio{ratio}", opset, f"y = RoiAlign<{attrs}>(x, rois, b)",
                 ROI_FEEDS)

# NonMaxSuppression: corner and centre boxes, every optional input absent in turn, a tied score
BOXES = RNG.uniform(0, 10, (2, 30, 4)).astype(np.float32)
SCORES = RNG.uniform(0, 1, (2, 3, 30)).astype(np.float32)
SCORES[0, 0, 6] = SCORES[0, 0, 5]
NMS_INITS = "int64[1] m = {4}, float[1] iou = {0.3}, float[1] st = {0.4}"
for center in (0, 1):
    for inputs in ("b, s, m, iou, st", "b, s, m, iou", "b, s, m", "b, s"):
        case(f"NonMaxSuppression-center{center}-{inputs.count(',') + 1}-inputs", 11,
             f"y = NonMaxSuppression<center_point_box={center}>({inputs})", {"b": BOXES, "s": SCORES}, "int64 y",
             NMS_INITS)

# GridSample: opset 16 and 20 mode names, every padding mode, align_corners, grid points outside [-1, 1]
GRID_FEEDS = {"x": r(2, 3, 6, 7), "g": RNG.uniform(-1.2, 1.2, (2, 5, 4, 2)).astype(np.float32)}
for opset, modes in ((16, ("bilinear", "nearest", "bicubic")), (20, ("linear", "nearest", "cubic"))):
    for mode in modes:
        for padding in ("zeros", "border", "reflection"):
            for align in (0, 1):
                case(f"GridSample-{opset}-{mode}-{padding}-align{align}", opset,
                     f'y = GridSample<mode="{mode}", padding_mode="{padding}", align_corners={align}>(x, g)',
                     GRID_FEEDS)

# CumSum, pools with dilations, ScatterND reductions
for exclusive in (0, 1):
    for reverse in (0, 1):
        case(f"CumSum-exclusive{exclusive}-reverse{reverse}", 14,
             f"y = CumSum<exclusive={exclusive}, reverse={reverse}>(x, a)", {"x": r(2, 3, 4)}, inits="int64 a = {-2}")
case("CumSum-int32", 14, "y = CumSum<exclusive=1>(x, a)", {"x": np.arange(6, dtype=np.int32).reshape(2, 3)},
     "int32 y", "int32 a = {1}")
POOL = r(2, 3, 9, 10)
for ceil in (0, 1):
    for include in (0, 1):
        for pads in ("[0, 0, 0, 0]", "[1, 1, 2, 1]"):
            case(f"AveragePool-dilations-ceil{ceil}-include{include}-pads{pads}", 19,
                 f"y = AveragePool<kernel_shape=[3, 2], strides=[2, 3], dilations=[2, 2], pads={pads}, "
                 f"ceil_mode={ceil}, count_include_pad={include}>(x)", {"x": POOL})
    case(f"LpPool-dilations-ceil{ceil}", 18, f"y = LpPool<kernel_shape=[2, 3], p=2, dilations=[2, 1], "
         f"pads=[1, 0, 0, 1], strides=[2, 2], ceil_mode={ceil}>(x)", {"x": POOL})
case("AveragePool-dilations-1d", 19, "y = AveragePool<kernel_shape=[3], dilations=[2], pads=[1, 1]>(x)",
     {"x": r(2, 3, 11)})
for reduction in ("add", "mul", "max", "min"):
    case(f"ScatterND-{reduction}", 18, f'y = ScatterND<reduction="{reduction}">(x, i, u)',
         {"x": r(4, 3, 2), "i": np.array([[1, 0], [3, 2], [1, 0], [-1, 1]]), "u": r(4, 2)})

# Resize with antialias when downsampling: linear and cubic, exclude_outside, coordinate modes, mixed up/down
AA_IMG = r(1, 2, 17, 13)
for mode in ("linear", "cubic"):
    for exclude in (0, 1):
        for transform in ("half_pixel", "align_corners", "asymmetric", "pytorch_half_pixel"):
            case(f"Resize-antialias-{mode}-exclude{exclude}-{transform}", 18,
                 f'y = Resize<mode="{mode}", antialias=1, exclude_outside={exclude}, '
                 f'coordinate_transformation_mode="{transform}">(x, , scales)', {"x": AA_IMG},
                 inits="float[4] scales = {1.0, 1.0, 0.35, 0.6}")
    case(f"Resize-antialias-{mode}-down-and-up", 18, f'y = Resize<mode="{mode}", antialias=1>(x, , , sizes)',
         {"x": AA_IMG}, inits="int64[4] sizes = {1, 2, 5, 20}")

# RMSNormalization and Attention (opset 23): 4-D and 3-D inputs, grouped heads, causal with a past, masks,
# softcap and every qk_matmul_output_mode
case("RMSNormalization-axis1", 23, "y = RMSNormalization<axis=1, epsilon=0.01>(x, s)", {"x": r(2, 3, 4), "s": r(3, 4)})
case("RMSNormalization-default", 23, "y = RMSNormalization(x, s)", {"x": r(2, 3, 4), "s": r(4)})
Q, K, V = r(2, 4, 5, 8), r(2, 2, 6, 8), r(2, 2, 6, 8)
QKV = {"q": Q, "k": K, "v": V}
case("Attention-grouped", 23, "y = Attention(q, k, v)", QKV)
case("Attention-causal-scale-softcap", 23, "y = Attention<is_causal=1, scale=0.3, softcap=2.0>(q, k, v)", QKV)
case("Attention-causal-past", 23, "y, pk, pv, qk = Attention<is_causal=1, qk_matmul_output_mode=2>"
     "(q, k, v, m, pk0, pv0)", {"q": Q, "k": K[:, :, :3], "v": V[:, :, :3], "m": r(5, 6), "pk0": K[:, :, :3],
                                "pv0": V[:, :, :3]}, "float y, float pk, float pv, float qk")
case("Attention-bool-mask", 23, "y = Attention(q, k, v, m)", {**QKV, "m": RNG.random((2, 1, 5, 6)) > 0.3})
case("Attention-3d", 23, "y = Attention<q_num_heads=4, kv_num_heads=2>(q, k, v)",
     {"q": r(2, 5, 32), "k": r(2, 6, 16), "v": r(2, 6, 16)})
for stage in range(4):
    case(f"Attention-qk-output-{stage}", 23, f"y, pk, pv, qk = Attention<qk_matmul_output_mode={stage}, "
         "softcap=1.5>(q, k, v, m)", {**QKV, "m": r(5, 6)}, "float y, float pk, float pv, float qk")

# Quantisation: per tensor and per axis, int8 and uint8, the integer ops and the QLinear ops
QX = (r(2, 3, 6, 6) * 2).astype(np.float32)
case("QuantizeLinear-uint8", 13, "y = QuantizeLinear(x, s, z)", {"x": QX}, "uint8 y",
     "float s = {0.02}, uint8 z = {128}")
case("QuantizeLinear-int8-per-axis", 13, "y = QuantizeLinear<axis=1>(x, s, z)", {"x": QX}, "int8 y",
     "float[3] s = {0.01, 0.02, 0.05}, int8[3] z = {0, -3, 5}")
case("QuantizeLinear-no-zero-point", 13, "y = QuantizeLinear(x, s)", {"x": QX}, "uint8 y", "float s = {0.03}")
case("QDQ-int8-per-axis", 13, "q = QuantizeLinear<axis=1>(x, s, z)\n y = DequantizeLinear<axis=1>(q, s, z)",
     {"x": QX}, inits="float[3] s = {0.01, 0.02, 0.05}, int8[3] z = {0, -3, 5}")
case("DequantizeLinear-int32", 13, "y = DequantizeLinear(i, s)", {"i": np.arange(-5, 5, dtype=np.int32)},
     inits="float s = {0.5}")
case("DynamicQuantizeLinear", 11, "y, s, z = DynamicQuantizeLinear(x)", {"x": QX}, "uint8 y, float s, uint8 z")
U8A = RNG.integers(0, 256, (3, 5, 7)).astype(np.uint8)
case("MatMulInteger", 10, "y = MatMulInteger(a, b, az, bz)", {"a": U8A}, "int32 y",
     "int8[7,4] b = {" + ", ".join(map(str, RNG.integers(-128, 128, 28))) + "}, uint8 az = {120}, "
     "int8[4] bz = {1, -2, 0, 3}")
U8X = RNG.integers(0, 256, (2, 3, 7, 8)).astype(np.uint8)
W8 = "int8[4,3,3,3] w = {" + ", ".join(map(str, RNG.integers(-128, 128, 108))) + "}"
case("ConvInteger", 10, "y = ConvInteger<pads=[1, 0, 1, 2], strides=[2, 1]>(x, w, xz)", {"x": U8X}, "int32 y",
     f"{W8}, uint8 xz = {{100}}")
case("QLinearConv-per-channel", 10, "y = QLinearConv<pads=[1, 1, 1, 1]>(x, xs, xz, w, ws, wz, ys, yz, bias)",
     {"x": U8X}, "uint8 y", f"{W8}, float xs = {{0.02}}, uint8 xz = {{100}}, float[4] ws = {{0.01, 0.02, 0.015, 0.03}}, "
     "int8[4] wz = {0, 0, 0, 0}, float ys = {0.2}, uint8 yz = {110}, int32[4] bias = {100, -200, 0, 5000}")
case("QLinearMatMul", 10, "y = QLinearMatMul(a, as, az, b, bs, bz, ys, yz)", {"a": U8A}, "uint8 y",
     "int8[7,4] b = {" + ", ".join(map(str, RNG.integers(-128, 128, 28))) + "}, float as = {0.05}, uint8 az = {128}, "
     "float bs = {0.02}, int8 bz = {0}, float ys = {0.3}, uint8 yz = {125}")

# Control flow: If on a data-dependent condition reading outer-scope tensors, Loop with carried values and
# scan outputs, Scan with reversed directions and other axes
IF_BODY = ("two = Constant<value_float=2.0>()\n s = ReduceSum<keepdims=0>(x)\n c = Greater(s, zero)\n"
           " y = If(c) <then_branch = t () => (float a) { a = Mul(x, two) }, "
           "else_branch = e () => (float b) { b = Sigmoid(x) }>")
case("If-then", 17, IF_BODY, {"x": np.abs(r(2, 3))}, inits="float zero = {0.0}")
case("If-else", 17, IF_BODY, {"x": -np.abs(r(2, 3))}, inits="float zero = {0.0}")
LOOP_BODY = ("y, s = Loop(n, t, x) <body = b (int64 i, bool ci, float v) => (bool co, float w, float u) {\n"
             " co = Identity(ci)\n f = Cast<to=1>(i)\n m = Mul(v, x)\n w = Add(m, f)\n"
             " u = ReduceSum<keepdims=0>(w) }>")
case("Loop-carried-and-scan", 17, LOOP_BODY, {"x": r(2, 3)}, "float y, float s", "int64 n = {3}, bool t = {1}")
case("Loop-condition-stops", 17, "y, s = Loop(, t, x) <body = b (int64 i, bool ci, float v) => "
     "(bool co, float w, float u) {\n w = Mul(v, two)\n u = ReduceMax<keepdims=0>(w)\n co = Less(u, limit) }>",
     {"x": np.abs(r(2, 3)) + 0.1}, "float y, float s", "bool t = {1}, float two = {2.0}, float limit = {20.0}")
case("Loop-with-If-inside", 17, "y = Loop(n, t, x) <body = b (int64 i, bool ci, float v) => (bool co, float w) {\n"
     " co = Identity(ci)\n odd = Mod(i, two)\n c = Equal(odd, one)\n"
     " w = If(c) <then_branch = t1 () => (float a) { a = Mul(v, x) }, else_branch = e1 () => (float b) "
     "{ b = Add(v, x) }> }>", {"x": r(2, 3)}, inits="int64 n = {4}, bool t = {1}, int64 two = {2}, int64 one = {1}")
case("Scan-directions-axes", 17, "h, ys = Scan<num_scan_inputs=1, scan_input_axes=[1], scan_input_directions=[1], "
     "scan_output_axes=[1], scan_output_directions=[1], body = b (float[2] hp, float[2] xt) => "
     "(float[2] hn, float[2] yt) {\n m = Mul(hp, w)\n hn = Add(m, xt)\n yt = Tanh(hn) }>(h0, x)",
     {"h0": r(2), "x": r(2, 5)}, "float h, float ys", "float w = {0.7}")


@pytest.mark.parametrize("opset,body,feeds,outputs,inits", CASES)
def test_op_matches_onnxruntime(opset, body, feeds, outputs, inits):
    assert_matches_ort(model(opset, body, feeds, outputs, inits), feeds)
