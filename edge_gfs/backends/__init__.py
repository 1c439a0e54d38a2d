"""What the node runs the feature extractor on: eager PyTorch, PyTorch on CUDA, a CPU artifact (ONNX Runtime or
OpenVINO) or a TensorRT engine.

Run-time only: the artifact format and its checks (artifact.py), the CPU's features (cpu_features.py), the
runners (cpu.py picks onnxruntime.py or openvino.py; tensorrt.py) and the --backend choice (select.py). Building
artifacts is calib/'s job, a desktop package the node never imports.
"""
