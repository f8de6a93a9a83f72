"""scgrn finetune."""
