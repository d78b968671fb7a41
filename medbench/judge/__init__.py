"""The LLM judge for long-form outputs: versioned prompts, an OpenAI-compatible async client with an
on-disk cache, and the runner that turns judge answers into per-sample scores.

Nothing here builds a client or touches the network at import; ``openai`` is imported on first use.
See ``docs/judge.md`` for configuration (environment variables) and the metrics.
"""
