"""What the node runs the feature extractor on: eager PyTorch, an ONNX Runtime artifact or a TensorRT engine.

Run-time only: the artifact format and its checks (artifact.py), the runners (onnxruntime.py, tensorrt.py) and
the --backend choice (select.py). Building artifacts is calib/'s job, a desktop package the node never imports.
"""
