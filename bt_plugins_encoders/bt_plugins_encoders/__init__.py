"""bt-plugins-encoders: BetterTransformer adapters for BERT-family text encoders."""
