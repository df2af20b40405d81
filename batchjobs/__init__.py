"""Offline batch jobs, without Ray: OpenAI Files/Batch objects, the job store, file storage,
input validation, chunked durable execution and result handlers."""
