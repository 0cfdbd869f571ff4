"""Ingests a folder of .txt files into Sluice, watches until they are indexed, searches them.

    python examples/ingest_folder.py ./notes --query "what moves the tides"

Connects to the local stack deploy/dev/up starts (127.0.0.1:50051, tenant demo, certificates in
.sluice/dev/tls); --target, --certs and --tenant point it elsewhere. Each file becomes one
document: its id the file's path in the folder, its title the first line, its text the whole
file. Exits 1 if any document fails to index.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sluice_client import Client, Document, IngestionState


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--query", help="what to search for (default: the first file's title)")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--certs", type=Path, default=Path(".sluice/dev/tls"), help="as sluice-admin cert client writes it")
    parser.add_argument("--tenant", default="demo")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for indexing")
    args = parser.parse_args(argv)

    files = sorted(p for p in args.folder.rglob("*.txt") if p.is_file())
    if not files:
        print(f"no .txt files in {args.folder}", file=sys.stderr)
        return 2
    documents = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        title = text.strip().splitlines()[0][:200] if text.strip() else path.stem
        name = path.relative_to(args.folder).as_posix()
        documents.append(Document(name, {"title": title, "text": text, "source": name}, {"folder": args.folder.name}))

    with Client.from_directory(args.target, args.certs, args.tenant) as sluice:
        accepted = sluice.ingest_many(documents)
        print(f"accepted {len(accepted)} documents; watching until they are indexed")
        failed = 0
        for event in sluice.watch([a.ingestion_id for a in accepted], timeout=args.timeout):
            ingestion = event.ingestion
            detail = {
                IngestionState.INDEXED: f"{ingestion.chunk_count} chunk(s)",
                IngestionState.FAILED: ingestion.failure_reason,
            }.get(ingestion.state, "")
            print(f"  {ingestion.document_id:<30} {ingestion.state.name:<8} {detail}")
            failed += ingestion.state is IngestionState.FAILED
        print(f"indexed {len(accepted) - failed} of {len(accepted)}")

        query = args.query or documents[0].fields["title"]
        print(f'searching: "{query}"')
        for hit in sluice.search(query, top_k=args.top_k, filters={"folder": args.folder.name}):
            text = " ".join(hit.text.split())
            print(f"  {hit.score:.3f}  {hit.document_id:<30} #{hit.chunk_index}  {text[:70]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
