"""The conditioned model (HaDM-ST style): measured neighbours by kriging, image features, a diffusion generator."""
