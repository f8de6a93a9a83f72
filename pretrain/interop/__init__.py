"""Interoperability with checkpoints of other projects: Hugging Face BERT (Geneformer) import and export."""
