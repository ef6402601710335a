"""Pretraining stage: traces -> a small causal LM, with Lightning."""
