"""scgrn pretrain."""
