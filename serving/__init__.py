"""BentoML service over the exported ONNX models (see serving/service.py)."""
