"""The pretraining corpus, built on the machine from text every Python install carries.

Why pydoc: the standard library's own documentation is several MB of English prose that any
machine with Python has, so the default pipeline needs no download and no data files in git.
To it we add plain-text facts from the training split of the chat tasks (see tasks.py).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import pydoc
import random
import re
import sys

from serving.helpers import UsageError
from training import tasks

# Modules whose documentation reads well and whose import has no side effects.
PYDOC_MODULES = (
    "abc argparse array ast asyncio base64 bisect calendar cmath codecs collections colorsys "
    "configparser contextlib copy csv dataclasses datetime decimal difflib dis doctest email enum "
    "filecmp fnmatch fractions functools gettext glob graphlib gzip hashlib heapq hmac html "
    "http.client inspect io ipaddress itertools json keyword locale logging lzma math mimetypes "
    "numbers operator os pathlib pickle platform pprint queue random re sched secrets selectors "
    "shlex shutil signal socket sqlite3 statistics string struct subprocess tarfile tempfile "
    "textwrap threading time timeit tokenize traceback types typing unicodedata unittest "
    "urllib.parse uuid warnings weakref zipfile zlib"
).split()


# Sections whose text depends on the machine rather than on Python: DATA shows module values
# (os.environ, time.tzname), FILE shows install paths. Dropping them makes the corpus, and so
# the default model, the same on every machine with the same Python.
MACHINE_SPECIFIC = ("DATA\n", "FILE\n")
# Default values print as <object object at 0x7f...>: the address changes with every run.
MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def pydoc_documents(max_chars: int) -> list[str]:
    """Plain-text pydoc pages, cut into paragraphs, until max_chars are collected."""
    docs: list[str] = []
    total = 0
    for name in PYDOC_MODULES:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                module = importlib.import_module(name)
            page = pydoc.render_doc(module, renderer=pydoc.plaintext)
        except Exception:  # a module missing on this platform is simply skipped
            continue
        for para in page.split("\n\n"):
            para = "\n".join(line.strip() for line in para.splitlines()).strip()
            # platform.architecture's default shows the running Python's path, which depends
            # on where it is installed
            para = MEMORY_ADDRESS.sub("", para).replace(sys.executable, "python")
            if len(para) < 40 or not para.isascii() or para.startswith(MACHINE_SPECIFIC):
                continue
            docs.append(para)
            total += len(para)
            if total >= max_chars:
                return docs
    return docs


DEFAULT_FACT_REPEATS = {"addition": 3, "subtraction": 6, "reverse": 4, "glossary": 4}


def build_documents(max_pydoc_chars: int = 1_500_000,
                    fact_repeats: dict[str, int] | None = None, seed: int = 0) -> list[str]:
    """Documents for pretraining: pydoc paragraphs and task-fact blocks, shuffled together.

    Each task's facts appear `fact_repeats[task]` times, each time in a new order: a skill like
    subtraction needs many more examples than one pass gives (it has borrows and signs, so it
    gets more than addition), as on the web, where sums are common.
    """
    rng = random.Random(seed)
    docs = pydoc_documents(max_pydoc_chars)
    block = 16  # facts per document, so a 128-token window holds several
    for task, repeats in (fact_repeats or DEFAULT_FACT_REPEATS).items():
        if task not in tasks.TAUGHT:
            raise UsageError(f"unknown task {task!r} in fact_repeats; "
                             f"tasks: {', '.join(tasks.TAUGHT)}")
        for _ in range(repeats):
            lines = tasks.fact_lines(task)
            rng.shuffle(lines)
            docs += ["\n".join(lines[i : i + block]) for i in range(0, len(lines), block)]
    rng.shuffle(docs)
    return docs
