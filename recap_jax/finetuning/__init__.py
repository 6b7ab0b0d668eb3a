"""Captioner fine-tuning (LLaVA-1.5 stages) on the one training loop (recap_jax/training/)."""
