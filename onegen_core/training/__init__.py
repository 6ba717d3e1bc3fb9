"""Training: the training file as a dataset, the one training loop (backward/step and logging passed in
by the caller), and the learning-rate schedule. Imports method."""
