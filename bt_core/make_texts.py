"""Write a corpus for ``bt bench --texts``: N texts, one per line, of lognormal word counts.

Words come from a fixed vocabulary and every draw from a seeded generator, so the same arguments give
the same file on any machine:

    python -m bt_core.make_texts --count 512 --out texts.txt
    bt bench --model DIR --texts texts.txt --batch-size 32 --threads 2 --runs 3

Lognormal lengths are what real short-text traffic looks like (most texts short, a long tail), which is
what makes padding matter: a batch pads every text to its longest one.
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

VOCABULARY = """
the a an of to in for on with by from at as about into over after before under between through during
model data system user search query result answer question document page text line word sentence
report table value number time day week year month today price order customer product service team
project issue change update release version build test error warning message request response server
client network memory disk file folder path cache index batch token vector score rank match list
fast slow small large new old first last next other same different simple complex public private
open close read write send receive find show keep start stop move turn give take make run use
is are was were be been has have had do does did can could will would should may might must
good better best poor clear short long high low early late recent local global main common
city river mountain forest ocean island road bridge station market school library hospital garden
music film book story song game art photo color light sound voice picture window door room house
water coffee tea bread fruit apple orange dinner lunch breakfast kitchen table chair street car train
and or but if then because while although unless until since so yet
""".split()


def make_texts(count: int, seed: int = 0, median_words: float = 12.0, sigma: float = 0.6) -> list[str]:
    """``count`` texts whose word counts are lognormal around ``median_words`` (1 to 200 words)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        words = min(200, max(1, round(rng.lognormvariate(math.log(median_words), sigma))))
        text = " ".join(rng.choice(VOCABULARY) for _ in range(words))
        texts.append(text[0].upper() + text[1:] + ".")
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=512, help="number of texts (default: 512)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--median-words", type=float, default=12.0, help="median words per text (default: 12)")
    parser.add_argument("--sigma", type=float, default=0.6, help="lognormal sigma of the word count (default: 0.6)")
    parser.add_argument("--out", type=Path, default=Path("texts.txt"), help="output file (default: texts.txt)")
    args = parser.parse_args()
    texts = make_texts(args.count, args.seed, args.median_words, args.sigma)
    args.out.write_text("\n".join(texts) + "\n", encoding="utf-8")
    print(f"wrote {len(texts)} texts to {args.out}")


if __name__ == "__main__":
    main()
