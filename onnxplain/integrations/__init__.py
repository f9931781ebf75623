"""onnxplain inside other inference servers: a KServe model (kserve.py) and a Ray Serve deployment (ray_serve.py).

Each module imports its server package only when used (`pip install onnxplain[kserve]` / `onnxplain[ray-serve]`).
"""
