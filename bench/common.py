"""What every bench script's command line shares: the ``--json`` flag and where the result dict goes.

A script adds the flag with :func:`add_json_flag`, and at the end (or after each stage) writes its result dict
with :func:`write_result` to every path of :func:`result_paths`: ``$OUT/<out_name>.json`` first when the script
has an ``out_name`` and the OUT variable is set, then the ``--json`` path when given.  Each write is atomic
(temp file + rename, :func:`util.io.fileio.write_json`), so a killed run never leaves a half-written file.
"""

import argparse
import os

JSON_HELP = "also write the result dict here (default: none)"


def add_json_flag(parser: argparse.ArgumentParser, help_text: str = JSON_HELP) -> None:
    """The ``--json PATH`` flag (default None)."""
    parser.add_argument('--json', default=None, help=help_text)


def result_paths(args: argparse.Namespace, out_name: str | None = None) -> list[str]:
    """Where the results go: ``$OUT/<out_name>.json`` (when ``out_name`` is given and OUT is set), then
    ``args.json`` (when given).  The same path twice is kept twice, as the scripts always did."""
    paths = []
    if out_name and os.environ.get('OUT'):
        paths.append(os.path.join(os.environ['OUT'], f'{out_name}.json'))
    if args.json:
        paths.append(args.json)
    return paths


def write_result(paths: list[str], result: dict) -> None:
    """Write ``result`` as JSON to each of ``paths``, atomically."""
    from util.io.fileio import write_json

    for path in paths:
        write_json(path, result)


def save_result(args: argparse.Namespace, result: dict, out_name: str | None = None) -> list[str]:
    """:func:`write_result` to :func:`result_paths`; returns the paths written."""
    paths = result_paths(args, out_name)
    write_result(paths, result)
    return paths


def print_paths(paths: list[str]) -> None:
    """The closing ``results: PATH, ...`` line (nothing when no file was written)."""
    if paths:
        print(f"results: {', '.join(paths)}")
