"""OneGen: one causal LM that generates and retrieves in a single pass (arXiv 2409.05152).

The method only: special tokens and roles, reconstruction, encoding, collation, losses, the model
wrapper, the training step, metrics and loaders. It imports torch, transformers, numpy and the
standard library, never an orchestration or infrastructure package (a test enforces it).
Submodules are imported on demand so `import onegen_core` stays cheap.
"""
__version__ = "0.1.0"
