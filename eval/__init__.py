"""The text-speech understanding gap harness."""
