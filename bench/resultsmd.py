"""What every script that writes bench/RESULTS.md shares: section markers, splicing one section in, tables,
and the command-line options that choose the checkpoint and where (and whether) to write.

RESULTS.md is shared: every section sits between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` (older
``<!-- name:start -->`` / ``<!-- name:end -->`` markers are read too). A script replaces only its own
sections and leaves every other section and all text outside sections as they are.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "RESULTS.md"
TITLE = "# Benchmark results\n"

_MARKER = re.compile(r"<!-- (?:BEGIN ([\w.-]+)|END ([\w.-]+)|([\w.-]+):(start|end)) -->")


def begin(name: str) -> str:
    return f"<!-- BEGIN {name} -->"


def end(name: str) -> str:
    return f"<!-- END {name} -->"


def parse_sections(text: str) -> dict[str, tuple[int, int]]:
    """name -> (start of the opening marker, end of the closing marker), for both marker styles.

    Raises ValueError on an unclosed, unopened, nested or repeated section: the file is then left alone.
    """
    sections: dict[str, tuple[int, int]] = {}
    open_name: str | None = None
    open_at = 0
    for m in _MARKER.finditer(text):
        opening = m.group(1) or (m.group(3) if m.group(4) == "start" else None)
        closing = m.group(2) or (m.group(3) if m.group(4) == "end" else None)
        if opening:
            if open_name is not None:
                raise ValueError(f"section {opening!r} opens inside section {open_name!r}")
            if opening in sections:
                raise ValueError(f"section {opening!r} appears twice")
            open_name, open_at = opening, m.start()
        else:
            if closing != open_name:
                raise ValueError(f"section {closing!r} closes but {open_name!r} is open")
            sections[closing] = (open_at, m.end())
            open_name = None
    if open_name is not None:
        raise ValueError(f"section {open_name!r} is never closed")
    return sections


def section_body(text: str, name: str) -> str | None:
    """What section ``name`` holds between its markers (None when the file has no such section)."""
    sections = parse_sections(text)
    if name not in sections:
        return None
    start, stop = sections[name]
    inner = text[start:stop]
    return _MARKER.sub("", inner).strip()


def splice(text: str, name: str, body: str, *, after: str | None = None, top: bool = False) -> str:
    """``text`` with section ``name`` holding ``body``; everything else unchanged.

    A missing section goes after section ``after`` when that exists; with ``top``, right under the file's
    ``# `` title; else at the end of the file.
    """
    if _MARKER.search(body):
        raise ValueError(f"the body of section {name!r} must not contain section markers")
    block = f"{begin(name)}\n{body.strip()}\n{end(name)}"
    sections = parse_sections(text)
    if name in sections:
        start, stop = sections[name]
        return text[:start] + block + text[stop:]
    if after is not None and after in sections:
        stop = sections[after][1]
        return text[:stop] + "\n\n" + block + text[stop:]
    if not text.strip():
        text = TITLE
    if top:
        title = re.search(r"^# .*$", text, flags=re.MULTILINE)
        if title is not None and not any(start < title.start() for start, _ in sections.values()):
            return text[:title.end()] + "\n\n" + block + "\n" + text[title.end():]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def write_section(path: str | Path, name: str, body: str, *, append: bool = False) -> None:
    """Put ``body`` into section ``name`` of the file (after what it holds, with ``append``)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else TITLE
    if append:
        old = section_body(text, name)
        body = f"{old}\n\n{body.strip()}" if old else body
    path.write_text(splice(text, name, body), encoding="utf-8")


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, align: str = "---") -> str:
    """A Markdown table (``align="---:"`` right-aligns every column)."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(f" {align} " for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ options


def add_model_args(p: argparse.ArgumentParser, *, size: str = "tiny") -> None:
    """``--model DIR`` (alias ``--model-dir``) or a locally built random test checkpoint of ``--size``."""
    p.add_argument("--model", "--model-dir", dest="model", default="",
                   help="checkpoint dir; empty: a locally built test checkpoint of --size")
    p.add_argument("--size", default=size, choices=["tiny", "full"], help="test checkpoint size when no --model")


def model_dir(args: argparse.Namespace) -> tuple[Path, str]:
    """The checkpoint the options name (building the test checkpoint when needed), and a label for reports."""
    if args.model:
        return Path(args.model), f"checkpoint {Path(args.model).name}"
    from milvus_embed_ext.encoder.testmodel import ensure_test_model

    path = ensure_test_model(REPO / ".cache" / f"test-model-{args.size}", size=args.size, seed=0)
    return path, f"{args.size} test checkpoint (random weights)"


def cpu_encoder(args: argparse.Namespace) -> tuple[Any, str]:
    """The options' checkpoint as an fp32 M3Encoder on the CPU (max length 512), and its label for reports."""
    from milvus_embed_ext.encoder import M3Encoder

    path, label = model_dir(args)
    return M3Encoder.from_pretrained(str(path), device="cpu", dtype="fp32", max_length=512), label


def add_results_args(p: argparse.ArgumentParser, section: str, *, opt_in: bool = False) -> None:
    """``--results FILE`` and either ``--write`` (``opt_in``: print only unless asked) or ``--no-write``."""
    p.add_argument("--results", default=str(RESULTS), help="the results file whose section is rewritten")
    if opt_in:
        p.add_argument("--write", action="store_true", help=f"rewrite the {section} section of --results")
    else:
        p.add_argument("--no-write", action="store_true", help=f"print the {section} section, do not write it")


def script_parser(description: str, section: str, *, size: str = "tiny", opt_in: bool = False,
                  corpus: tuple[int, int, int] | None = None) -> argparse.ArgumentParser:
    """The parser every measure script starts from: the checkpoint options, ``--results`` with ``--write`` or
    ``--no-write``, and, with ``corpus=(docs, queries, seed)``, the synthetic corpus' size and seed."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, size=size)
    add_results_args(p, section, opt_in=opt_in)
    if corpus is not None:
        docs, queries, seed = corpus
        p.add_argument("--docs", type=int, default=docs, help="synthetic documents")
        p.add_argument("--queries", type=int, default=queries, help="queries drawn from the corpus")
        p.add_argument("--seed", type=int, default=seed)
    return p


def should_write(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "write", False)) or (hasattr(args, "no_write") and not args.no_write)


def data_path(args: argparse.Namespace, name: str) -> Path:
    """Where a script keeps its figures as JSON for the plots: ``results/name`` beside ``--results``."""
    return Path(args.results).parent / "results" / name


def publish(args: argparse.Namespace, section: str, text: str, *, append: bool = False) -> None:
    """Print a script's section, and put it into section ``section`` of ``--results`` (after what it holds,
    with ``append``) unless the options say not to write."""
    print(text)
    if should_write(args):
        write_section(args.results, section, text, append=append)
        print(f"wrote section {section} of {args.results}", file=sys.stderr)


__all__ = ["RESULTS", "add_model_args", "add_results_args", "begin", "cpu_encoder", "data_path", "end", "model_dir",
           "parse_sections", "publish", "script_parser", "section_body", "should_write", "splice", "table",
           "write_section"]
