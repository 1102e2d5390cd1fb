"""The model registry: uploaded ONNX models, their versions and datasets, stored content-addressed."""
