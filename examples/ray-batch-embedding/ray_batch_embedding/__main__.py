"""``python -m ray_batch_embedding``: the job's command line.

Run as a package, ``Embedder`` stays ``ray_batch_embedding.job.Embedder`` and Ray pickles it by
reference; run as ``python -m ray_batch_embedding.job`` it would be ``__main__.Embedder``.
"""

import sys

from ray_batch_embedding.job import main

sys.exit(main())
