"""The engine deployment and the vLLM engine behind it."""
