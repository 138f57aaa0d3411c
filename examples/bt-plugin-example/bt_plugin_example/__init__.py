"""bt-plugin-example: how a company ships BetterTransformer support for its own encoder.

``modeling`` defines ACME's encoder as a transformers model (``model_type="acme-encoder"``),
``adapter`` maps its layer onto bt's fused layer, and ``plugin`` tells bt about it.
"""

__version__ = "0.1.0"
