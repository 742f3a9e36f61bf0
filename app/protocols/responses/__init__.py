"""The OpenAI Responses API front door (`POST /v1/responses`)."""
