"""Training and evaluation: corpora, windows and document splits, the trainer, the evaluation
scores and baselines, and the demo's artifacts. Serving never imports it (a contract in
pyproject.toml): a worker loads a checkpoint and a bank, never a corpus or a trainer."""
