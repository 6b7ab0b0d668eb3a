"""Image-generation metrics: Frechet distance, InceptionV3 pool features (FID), CLIP score."""
