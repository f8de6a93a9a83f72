"""Benchmarks for scgrn's loaders: a shared benchmark corpus and public baselines to compare against."""
