"""Evaluate what pretraining learned (Exceiver's evaluations): masked values, cells, genes, transfer."""
