"""edgecnn: take a PyTorch CNN to verified, compressed edge artifacts.

Python API (each pass is a plain function over a validated config):
    from edgecnn.data import load_data, DataConfig
    from edgecnn.models import build_model, ModelConfig
    from edgecnn.train import fit, evaluate, TrainConfig
    from edgecnn.compress import prune, distill, quantize
    from edgecnn.export import export_all
Heavy backends (onnxruntime, openvino, litert) load only when used.
"""
__version__ = "0.1.0"
