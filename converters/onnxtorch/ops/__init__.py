"""One function per ONNX op, grouped by family; importing this package registers them all."""
from . import activation, conv, math, norm, pool, reduce, resize, shape, tensor  # noqa: F401
