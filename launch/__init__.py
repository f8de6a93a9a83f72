"""scgrn launch."""
