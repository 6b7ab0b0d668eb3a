"""The paper in miniature on one CPU (`python -m recap_jax.reproduce`); see docs/mini_paper.md."""
