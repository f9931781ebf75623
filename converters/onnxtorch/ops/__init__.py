"""One function per ONNX op, grouped by family; importing this package registers them all."""
from . import activation, attention, control, conv, cumulative, detection, math, norm, pool, quant, reduce, resize, shape, tensor  # noqa: F401
