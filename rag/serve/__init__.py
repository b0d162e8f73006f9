"""The server of `rag serve`: the chat page at / and the OpenAI-compatible API at /v1 (docs/api.md)."""
