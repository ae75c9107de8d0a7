"""`lmlm data list|fetch|path`: the data registry (lmlm.datasets) from the command line.

`fetch` and `path` print the data set's folder as their last line, so `$(lmlm data path NAME)` works.
"""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="data sets by name: list, download and verify, locate")
    dsub = data.add_subparsers(dest="data_command", required=True)
    ls = dsub.add_parser("list", help="registered data sets, their source, size and local state")
    ls.set_defaults(func=_list)
    fetch = dsub.add_parser("fetch", help="download what is missing, verify every file, print the folder")
    fetch.add_argument("name", help="data set name (see `lmlm data list`)")
    fetch.add_argument("--force", action="store_true",
                       help="download every file again (each replaced only once the new copy verifies)")
    fetch.add_argument("--base-url", help="download from this base URL instead of the data set's source")
    fetch.add_argument("--quiet", action="store_true", help="no progress bars")
    fetch.set_defaults(func=_fetch)
    path = dsub.add_parser("path", help="print the data set's folder (downloads nothing)")
    path.add_argument("name", help="data set name")
    path.set_defaults(func=_path)


def _list(args: argparse.Namespace) -> int:
    from lmlm.datasets import REGISTRY, data_root, status

    print(f"data dir: {data_root()}")
    for ds in REGISTRY.values():
        st = status(ds.name)
        ok = sum(v == "ok" for v in st.values())
        print(f"\n{ds.name}  ({len(ds.files)} files, {ds.size / 1e6:.1f} MB, {ok} present and valid)")
        print(f"  {ds.description}")
        print(f"  source: {ds.homepage}  licence: {ds.license}")
        for f in ds.files:
            print(f"  {st[f.name] if st[f.name] in ('ok', 'missing') else 'INVALID':8} {f.size:>10,}  {f.name}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from lmlm.datasets import fetch

    print(fetch(args.name, force=args.force, progress=not args.quiet, base_url=args.base_url))
    return 0


def _path(args: argparse.Namespace) -> int:
    from lmlm.datasets import dataset_dir

    print(dataset_dir(args.name))
    return 0
