"""Recap-DiT: the paper's text-to-image half (model, codecs, schedules, samplers, jobs)."""
