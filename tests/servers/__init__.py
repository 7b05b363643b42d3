"""Adapter tests against servers nobody here wrote (a LiteLLM proxy)."""
