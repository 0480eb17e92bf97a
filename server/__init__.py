"""OpenAI-compatible HTTP front end: FastAPI app, protocol models, SSE, metrics. No tensors here."""
