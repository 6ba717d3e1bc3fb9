"""The OneGen method itself: special tokens and roles, examples as segments, encoding to ids and labels,
the collator (padding only), pair sampling, the two losses, the model wrapper, backbones and LoRA.
Imports torch, transformers and the standard library only; nothing else of onegen_core but config."""
