"""Evaluation of megadfm models: tasks that score a model through plain callables, so the scoring code
holds no model. HumanEval draws completions, cuts them at the Codex stop sequences and runs each
candidate program in a contained child process (``sandbox``), reporting the unbiased pass@k
(``pass_at_k``) with its standard error; the model adapters and the other tasks sit beside it.
"""
