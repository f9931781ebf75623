"""The ONNX backend node test suite (onnx 1.22.0 wheel) run through onnxtorch, compared as onnx's runner does.

Each case ends in one of: "pass" (every output has the expected shape and dtype and is within rtol 1e-3,
atol 1e-7), "onnxruntime" (the spec's data differs, but the outputs match onnxruntime's, the converter's
oracle, as closely), "refused" (to_torch raised UnsupportedOp/UnsupportedModel before anything ran), "wrong" (a
value, shape or dtype differs) or "crash" (any other exception, at build or run time).

    PYTHONPATH=.:converters:tests python tests/onnxtorch/backend_suite.py   # the per-op table
"""
from __future__ import annotations

import collections
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

import onnxtorch
from onnxtorch.graph import array_to_torch

PREFIX = "onnx/backend/test/data/node/"
RTOL, ATOL = 1e-3, 1e-7

# The ops image models use (classifiers, detectors, segmenters, optical flow, their exporters' shape plumbing).
VISION_OPS = frozenset("""
Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant ConstantOfShape Conv
ConvTranspose CumSum DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand Flatten Floor
Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization HardSigmoid HardSwish Identity If InstanceNormalization LRN LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul Max MaxPool Mean Min Mish Mul Neg NonMaxSuppression
NonZero Not Or PRelu Pad Pow QuantizeLinear Range Reciprocal ReduceL2 ReduceMax ReduceMean ReduceMin ReduceSum
Relu Reshape Resize RoiAlign Round ScatterElements ScatterND Selu Shape Sigmoid Sign Size Slice Softmax Softplus
SpaceToDepth Split Sqrt Squeeze Sub Sum Tanh Tile TopK Transpose Unsqueeze Upsample Where
""".split())


@dataclass(frozen=True)
class Case:
    """One backend test: its name, the op it tests, the model and its data sets (inputs, expected outputs)."""

    name: str
    op: str
    model: onnx.ModelProto
    data_sets: tuple[tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]], ...]


@dataclass(frozen=True)
class Result:
    """How one case ended ("pass", "onnxruntime", "refused", "wrong", "crash") and why."""

    case: str
    op: str
    outcome: str
    detail: str = ""


def load_cases(wheel: Path) -> list[Case]:
    """Every node test case in the wheel, with the op it tests."""
    with zipfile.ZipFile(wheel) as archive:
        files: dict[str, list[str]] = collections.defaultdict(list)
        for name in archive.namelist():
            if name.startswith(PREFIX) and not name.endswith("/"):
                files[name[len(PREFIX):].split("/")[0]].append(name)
        models = {case: onnx.load_from_string(archive.read(f"{PREFIX}{case}/model.onnx")) for case in files}
        cases = []
        for case in sorted(files):
            sets = sorted({n.split("/")[-2] for n in files[case] if "/test_data_set_" in n})
            graph = models[case].graph
            data = tuple((read_protos(archive, f"{PREFIX}{case}/{s}/input_", model_inputs(graph)),
                          read_protos(archive, f"{PREFIX}{case}/{s}/output_", list(graph.output))) for s in sets)
            cases.append(Case(case, op_under_test(case, models), models[case], data))
    return cases


def read_protos(archive: zipfile.ZipFile, prefix: str, values: list[onnx.ValueInfoProto]) -> tuple:
    """input_0.pb, input_1.pb, ... as arrays; None for a sequence, map or optional (never a plain tensor)."""
    arrays = []
    for index, value in enumerate(values):
        name = f"{prefix}{index}.pb"
        if name not in archive.NameToInfo:
            break
        if value.type.WhichOneof("value") != "tensor_type":
            arrays.append(None)
            continue
        tensor = onnx.TensorProto()
        tensor.ParseFromString(archive.read(name))
        arrays.append(numpy_helper.to_array(tensor))
    return tuple(arrays)


def model_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs a caller feeds (initializers listed as inputs are not fed)."""
    initializers = {t.name for t in graph.initializer}
    return [v for v in graph.input if v.name not in initializers]


def op_under_test(case: str, models: dict[str, onnx.ModelProto]) -> str:
    """The op a case tests: its only node's op; for a function-expanded case, the unexpanded sibling's."""
    base = re.sub(r"_expanded(_ver\d+)?$", "", case)
    for name in (case, base):
        model = models.get(name)
        if model is not None and len(model.graph.node) == 1:
            return model.graph.node[0].op_type
    nodes = models[case].graph.node
    return nodes[0].op_type if nodes else "?"


def run_case(case: Case) -> Result:
    """Build the case's module once, run every data set, and compare as onnx's backend runner does."""
    try:
        module = onnxtorch.to_torch(case.model)
    except (onnxtorch.UnsupportedOp, onnxtorch.UnsupportedModel) as exc:
        return Result(case.name, case.op, "refused", str(exc))
    except Exception as exc:  # noqa: BLE001 - the suite reports every failure
        return Result(case.name, case.op, "crash", f"build: {type(exc).__name__}: {exc}")
    for inputs, expected in case.data_sets:
        try:
            with torch.no_grad():
                outputs = module(*[as_tensor(x) for x in inputs])
        except Exception as exc:  # noqa: BLE001
            return Result(case.name, case.op, "crash", f"run: {type(exc).__name__}: {str(exc)[:200]}")
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        problem = compare(outputs, expected)
        if problem and not compare(outputs, onnxruntime_outputs(case.model, inputs)):
            return Result(case.name, case.op, "onnxruntime", f"as onnxruntime, not the spec's data: {problem}")
        if problem:
            return Result(case.name, case.op, "wrong", problem)
    return Result(case.name, case.op, "pass")


def onnxruntime_outputs(model: onnx.ModelProto, inputs: tuple) -> tuple:
    """onnxruntime's outputs for the case (the converter's oracle where it and the spec's data differ)."""
    import onnxruntime as ort
    proto = onnx.ModelProto.FromString(model.SerializeToString())
    proto.ir_version = min(proto.ir_version, 10)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return tuple(session.run(None, {i.name: x for i, x in zip(session.get_inputs(), inputs)}))


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A test input as a torch tensor (bfloat16 and float8 arrays through their bits: torch.from_numpy
    lacks them)."""
    return array_to_torch(array)


def compare(outputs: tuple, expected: tuple) -> str:
    """'' when every output matches in shape, dtype and value (rtol 1e-3, atol 1e-7), else what differs."""
    if len(outputs) != len(expected):
        return f"{len(outputs)} outputs, expected {len(expected)}"
    for index, (actual, want) in enumerate(zip(outputs, expected)):
        if not isinstance(actual, torch.Tensor):
            return f"output {index} is {type(actual).__name__}, not a tensor"
        if tuple(actual.shape) != want.shape:
            return f"output {index} shape {tuple(actual.shape)}, expected {want.shape}"
        got, want_name = str(actual.dtype).removeprefix("torch."), np.dtype(want.dtype).name
        if got != want_name and not (got == "bool" and want_name == "bool"):
            return f"output {index} dtype {got}, expected {want_name}"
        a = actual.detach().cpu()
        if a.dtype in (torch.bfloat16,) or "float8" in got:
            a, want = a.float().numpy(), want.astype(np.float32)
        else:
            a = a.numpy()
        try:
            np.testing.assert_allclose(a, want, rtol=RTOL, atol=ATOL)
        except AssertionError as exc:
            return f"output {index} values: {' '.join(str(exc).split())[:200]}"
    return ""


def run_suite(cases: list[Case]) -> list[Result]:
    """Every case's result (one torch thread, the suite's determinism)."""
    torch.manual_seed(0)
    return [run_case(case) for case in cases]


def figures(results: list[Result]) -> dict[str, collections.Counter]:
    """Outcome counts for the vision cases and for all cases."""
    return {"vision": collections.Counter(r.outcome for r in results if r.op in VISION_OPS),
            "all": collections.Counter(r.outcome for r in results)}


def op_table(results: list[Result]) -> str:
    """Per op, compactly: the ops whose cases all pass, those all refused, and a pass / refused / wrong table for
    the rest (vision ops marked *)."""
    per_op: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in results:
        per_op[r.op][r.outcome] += 1
    label = {op: f"{op}*" if op in VISION_OPS else op for op in per_op}
    passing = [label[op] for op in sorted(per_op) if per_op[op]["pass"] == sum(per_op[op].values())]
    refused = [label[op] for op in sorted(per_op) if per_op[op]["refused"] == sum(per_op[op].values())]
    lines = [f"All cases pass ({len(passing)} ops): {', '.join(passing)}.", "",
             f"All cases refused ({len(refused)} ops): {', '.join(refused)}.", "",
             "| op | pass | refused | wrong or crash |", "|---|---|---|---|"]
    for op in sorted(per_op, key=lambda o: (o not in VISION_OPS, o)):
        c = per_op[op]
        if label[op] not in passing and label[op] not in refused:
            lines.append(f"| {label[op]} | {c['pass']} | {c['refused']} | {c['wrong'] + c['crash']} |")
    return "\n".join(lines)


def main() -> None:
    from real_models import onnx_backend_wheel
    results = run_suite(load_cases(onnx_backend_wheel()))
    for scope, counts in figures(results).items():
        total = sum(counts.values())
        print(f"{scope}: {total} cases, {counts['pass']} pass, {counts['onnxruntime']} as onnxruntime, "
              f"{counts['refused']} refused, "
              f"{counts['wrong']} wrong, {counts['crash']} crash")
    if "-v" in sys.argv:
        for r in results:
            if r.outcome in ("wrong", "crash", "onnxruntime") or ("-vv" in sys.argv and r.outcome == "refused"):
                print(f"{r.outcome:8} {r.case} [{r.op}]: {r.detail[:300]}")
    print(op_table(results))


if __name__ == "__main__":
    main()
