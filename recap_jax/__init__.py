"""recap_jax: recaption images with LLaVA-1.5 + LLaMA-3 in JAX, and train CLIP on the result."""
