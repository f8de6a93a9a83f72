"""Parallelism for pretraining. `engine.py` is the only module in scgrn that imports DeepSpeed."""
