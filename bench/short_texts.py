"""A short-text sentiment set made from IMDB: each review's first sentence with the review's label.

    python bench/short_texts.py outputs/short_texts.csv            # 4,000 sentences, 2,000 of each class
    python -m sentiment_lora.train data=csv data.path=outputs/short_texts.csv data.n_train=1600 data.n_val=500 \
        data.n_test=1000 data.balance=true

It stands in for the tweets, product-review sentences and headlines many users bring, to check the default model
choice (docs/configuration.md, "The default model") against measured time on texts of ~25 tokens. A first sentence
often carries no sentiment ("I saw this film in 1985."), so accuracies are lower than on whole reviews.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sentiment_lora.data.pipeline import strip_html  # noqa: E402
from sentiment_lora.sources import imdb_csv  # noqa: E402

# A sentence ends at . ! or ? followed by white space; good enough for a benchmark set (no library in the
# project's dependencies splits sentences).
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def first_sentence(review: str) -> str:
    return SENTENCE_END.split(strip_html(review).strip(), maxsplit=1)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=2000)
    parser.add_argument("--min-words", type=int, default=4, help="drop first sentences shorter than this")
    opts = parser.parse_args()
    reviews = pd.read_csv(imdb_csv()).drop_duplicates("review")
    frame = pd.DataFrame({"text": reviews["review"].map(first_sentence), "label": reviews["sentiment"]})
    frame = frame[frame["text"].str.split().str.len() >= opts.min_words].drop_duplicates("text")
    # The file's first sentences of each class, in file order: deterministic, no sampling.
    kept = pd.concat([group.head(opts.per_class) for _, group in frame.groupby("label", sort=True)])
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    kept.sort_index().to_csv(opts.out, index=False)
    words = kept["text"].str.split().str.len()
    print(
        f"{len(kept)} sentences to {opts.out}: {kept['label'].value_counts().to_dict()}, median {words.median():.0f} "
        f"words (max {words.max()})"
    )


if __name__ == "__main__":
    main()
