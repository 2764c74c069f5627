"""The text and DNA corpora of the `scale` presets, put under .data/ compressed, to travel to a GPU machine.

    python scripts/scale_data.py [--shared ../shared/data/large] [--out .data]

  .data/text/books/<id>.txt.gz   each book of large/text/books_en.jsonl.gz as one gzip file (the `text`
                                 source reads a folder, one document a file, and gunzips it: no need for
                                 Hugging Face `datasets` on the GPU machine)
  .data/dna/bacteria.fa.gz       large/dna/bacteria.fa.gz as it is (the FASTA source reads .gz)

The code corpus is not among them: `scripts/code_corpus.py` builds it on the machine that trains, from the
Python sources installed there. Prints what it wrote and the total against the 64 MiB that a device
call carries.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CARRY_LIMIT = 64 * 2**20


def write_books(jsonl_gz: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with gzip.open(jsonl_gz, "rt", encoding="utf-8") as f:
        for line in f:
            book = json.loads(line)
            path = out / f"{book['id']}.txt.gz"
            # mtime 0: the same bytes give the same file on every call
            path.write_bytes(gzip.compress(book["text"].encode("utf-8"), compresslevel=9, mtime=0))
            written.append(path)
    return written


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python scripts/scale_data.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data" / "large")
    parser.add_argument("--out", type=Path, default=REPO / ".data")
    args = parser.parse_args(argv)
    books, bacteria = args.shared / "text" / "books_en.jsonl.gz", args.shared / "dna" / "bacteria.fa.gz"
    for path in (books, bacteria):
        if not path.is_file():
            parser.error(f"{path} does not exist (--shared names the folder of the large corpora)")
    shutil.rmtree(args.out / "text" / "books", ignore_errors=True)
    written = write_books(books, args.out / "text" / "books")
    (args.out / "dna").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bacteria, args.out / "dna" / "bacteria.fa.gz")
    written.append(args.out / "dna" / "bacteria.fa.gz")
    total = sum(p.stat().st_size for p in written)
    print(f"wrote {len(written) - 1} books to {args.out / 'text' / 'books'} and {args.out / 'dna' / 'bacteria.fa.gz'}: "
          f"{total / 2**20:.1f} MiB compressed, {total / CARRY_LIMIT:.0%} of what a device call carries")
    return written


if __name__ == "__main__":
    main()
