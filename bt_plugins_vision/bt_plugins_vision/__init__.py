"""bt-plugins-vision: BetterTransformer adapters for ViT-family vision encoders."""
