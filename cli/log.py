"""``vsl log ...``: read vSL's own log (text or JSON lines, as `vsl serve` writes them)."""
from __future__ import annotations

import gzip
import zlib
from contextlib import ExitStack
from typing import BinaryIO, Iterator

import click

GZIP_MAGIC = b"\x1f\x8b"
MAX_LINE = 64 * 1024  # longer lines are cut here (no vSL line is that long): bounded memory


@click.group()
def log() -> None:
    """Read vSL's own log: totals, rejects, deliveries (docs/observability.md)."""


@log.command()
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=1),
              help="Rows per table (senders, recipients, clients, rejects ...).")
@click.option("--json", "as_json", is_flag=True, help="The summary as one JSON document.")
def summary(files, top, as_json) -> None:
    """Summarize FILES (vsl serve's log, text or JSON lines, gzipped or not; - or none: stdin) as
    pflogsumm does: grand totals, traffic per hour, rejects by stage and reply, deferrals and
    bounces, top senders, recipients and clients, AUTH failures, warnings and errors."""
    from vsl.server import logsummary

    with ExitStack() as stack:
        handles = [(name, _open(name, stack)) for name in files or ("-",)]
        result = logsummary.summarize_lines(_lines(handles), top=top)
    click.echo(logsummary.as_json(result) if as_json else logsummary.render(result), nl=False)


def _open(name: str, stack: ExitStack) -> BinaryIO:
    """``name`` opened for reading bytes (- is stdin), gunzipped when it is gzip data."""
    try:
        handle = (click.get_binary_stream("stdin") if name == "-"
                  else stack.enter_context(open(name, "rb")))
        gzipped = handle.peek(2)[:2] == GZIP_MAGIC
    except OSError as err:
        raise click.ClickException(f"{name}: {err.strerror or err}") from None
    return stack.enter_context(gzip.GzipFile(fileobj=handle)) if gzipped else handle


def _lines(handles: list[tuple[str, BinaryIO]]) -> Iterator[bytes]:
    """Every line of every handle, in order, at most MAX_LINE bytes of each (the rest of a
    longer line is read and dropped); a read error names its file."""
    for name, handle in handles:
        try:
            yield from _bounded_lines(handle)
        except (OSError, EOFError, zlib.error) as err:
            raise click.ClickException(f"{name}: {getattr(err, 'strerror', None) or err}"
                                       ) from None


def _bounded_lines(handle: BinaryIO) -> Iterator[bytes]:
    cut = False
    while line := handle.readline(MAX_LINE):
        if not cut:
            yield line
        cut = not line.endswith(b"\n")
