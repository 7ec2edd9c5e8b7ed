"""Converters and locators that turn small offline assets into transformers checkpoints."""
