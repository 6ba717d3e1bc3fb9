"""Inference: one-pass generation with retrieval over a KV cache, the vector-index protocol, document
encoding into vectors, and the bytes of tokens for constrained copy decoding. Imports method."""
