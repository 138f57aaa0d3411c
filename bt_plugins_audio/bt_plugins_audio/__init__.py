"""bt-plugins-audio: BetterTransformer adapters for speech encoders."""
