"""Write the evaluation samples packaged in src/hyperedit/data/samples: the first 200 records of
each source file, unchanged, one JSON object per line. Run from the repository root with the
benchmark data in place (``hyperedit data fetch counterfact zsre fever``):

    python scripts/make_data_samples.py [--data-dir DIR]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from hyperedit.data._common import read_records, resolve_data_dir
from hyperedit.data.load import DATASETS, SAMPLES, SAMPLES_DIR

RECORDS = 200
SOURCE_SPLIT = {"counterfact:sample": "counterfact:val", "zsre:sample": "zsre:knowedit-test",
                "fever:sample": "fever:v0.1-full"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    base = resolve_data_dir(args.data_dir)
    for sample, split in SOURCE_SPLIT.items():
        source = base / DATASETS[split]
        records = [value for _, value in read_records(source, str(source))][:RECORDS]
        out = SAMPLES_DIR / SAMPLES[sample]
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        print(f"{sample}: {len(records)} records of {split} -> {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
