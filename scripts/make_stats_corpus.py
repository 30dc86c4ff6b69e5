"""Generate the packaged statistics corpus (``hyperedit/data/stats_corpus.txt.gz``) with the embedded model.

The key statistics need generic text in the model's input distribution. Text sampled from the
embedded SmolLM2-135M (Apache-2.0) is licence-clean and reproducible: fixed openers (below), one
batch of all openers per round with a fixed seed per round, nucleus sampling. One text per line. Resumable: texts already in ``--out``
(uncompressed; whole rounds) are kept and generation goes on from there; ``--gzip`` writes the packaged file.

    python scripts/make_stats_corpus.py --out /tmp/corpus.txt --gzip src/hyperedit/data/stats_corpus.txt.gz
"""
from __future__ import annotations

import argparse
import gzip
import logging
from pathlib import Path

import torch

from hyperedit.models import load_model

log = logging.getLogger("make_stats_corpus")

OPENERS = [
    "The history of the city", "In mathematics, a", "The river rises in", "During the nineteenth century,",
    "The football club was founded", "Her first album", "The company was founded in", "The film tells the story of",
    "The university is", "In biology, the", "The village lies", "He was born in", "The war ended when",
    "The language is spoken by", "The species is found in", "The church was built", "The novel is set in",
    "The election was held on", "The island has a population of", "The band released", "The museum houses",
    "The mountain is", "The album was recorded", "The bridge crosses", "In physics,", "The king died in",
    "The railway station", "The painting shows", "The team won", "The law requires", "The president of",
    "The disease is caused by", "The airport serves", "The recipe calls for", "The school was opened",
    "The temple is dedicated to", "The capital of the province", "The song reached number", "The ship was launched",
    "The festival takes place", "The software is used to", "The treaty was signed", "The lake is",
    "The party won", "The dish is made with", "The actor appeared in", "The newspaper reported that",
    "The book describes", "The bird feeds on", "The castle was", "The economy of the country",
    "The tournament was played", "The singer was born", "The theory states that", "The region is known for",
    "The emperor ordered", "The game was released", "The hospital", "The climate of the area", "The poet wrote",
    "The army marched", "The station broadcasts", "The building was designed by", "The planet", "The river flows",
    "The cathedral", "The scientist discovered", "The town is located", "The player joined", "The court ruled",
    "The population of the city", "The engine", "The tradition of", "The kingdom", "The plant grows",
    "The road connects", "The writer moved to", "The symphony", "The company produces", "The park covers",
    "The minister announced", "The dog", "The mineral", "The festival of", "The composer", "The empire",
    "The river valley", "The programme was broadcast", "The coach", "The journal publishes", "The tower",
    "The village church", "The computer", "The district", "The battle of", "The magazine", "The harbour",
    "The organisation", "The family moved", "The star", "The bank",
]


def _existing(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []


def _clean(text: str) -> str:
    text = " ".join(text.split())
    cut = text.rfind(". ")  # end on a full sentence where there is one
    return text[: cut + 1] if cut > len(text) // 2 else text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="plain text file, one text per line (resumed if present)")
    ap.add_argument("--rounds", type=int, default=7, help="texts per opener (one batch of all openers per round)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--gzip", help="also write the result gzip-compressed here (reproducible: mtime 0)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    lm = load_model("smollm2-135m")
    tok = lm.tokenizer
    tok.padding_side = "left"
    done = len(_existing(out)) // len(OPENERS)  # whole rounds already written
    with out.open("a", encoding="utf-8") as fh:
        for round_ in range(done, args.rounds):
            torch.manual_seed(args.seed + round_)
            enc = tok(OPENERS, return_tensors="pt", padding=True)
            with torch.no_grad():
                ids = lm.model.generate(**enc, do_sample=True, top_p=0.95, temperature=0.9, max_new_tokens=args.tokens,
                                        pad_token_id=tok.pad_token_id, repetition_penalty=1.1)
            texts = [_clean(t) for t in tok.batch_decode(ids, skip_special_tokens=True)]
            fh.write("".join(t + "\n" for t in texts))
            fh.flush()
            log.info("round %d / %d", round_ + 1, args.rounds)
    if args.gzip:
        data = out.read_bytes()
        with open(args.gzip, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            gz.write(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
