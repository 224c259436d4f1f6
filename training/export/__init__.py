"""Exporters: the trained model folder in the formats runtimes load (ONNX, GGUF, Ollama)."""
