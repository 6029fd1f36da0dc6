"""Model loading: SDXL through diffusers, the BLIP-2 captioner, the tiny stand-ins built offline."""
