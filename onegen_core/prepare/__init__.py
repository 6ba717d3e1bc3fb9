"""Task records -> OneGen training examples: reconstruction per task (multi-hop QA, entity linking,
Self-RAG), heuristic positive/negative labelling, the LLM decomposition prompt and its parser, the
embedded entity KB, documents for encoding, and sentence splitting. Imports method and data."""
