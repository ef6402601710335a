"""OpenAI-compatible endpoints, as every stage that buys completions uses them (``compare`` contestants, ``sft``
teachers): concurrency and rate limits, retries, a persistent response cache (a rerun or a resume pays nothing
twice) and a spend cap."""

from thinkflow.api.client import APIClient, APIError, Call, Endpoint, Limits, MissingKey, SpendCapReached

__all__ = ["APIClient", "APIError", "Call", "Endpoint", "Limits", "MissingKey", "SpendCapReached"]
