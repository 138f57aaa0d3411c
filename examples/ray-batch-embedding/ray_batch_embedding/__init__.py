"""Batch embedding on Ray Data with one bt-converted sentence-transformers model per actor.

The job lives in :mod:`ray_batch_embedding.job`; run it with ``python -m ray_batch_embedding``.
Nothing is imported here, so that Ray workers unpickling ``job.Embedder`` load only what it needs.
"""
