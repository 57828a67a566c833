"""The COCO toolkit's own tokenizer: Stanford CoreNLP 3.4.1's PTBTokenizer, run with Java.

pycocoevalcap runs ``java -cp stanford-corenlp-3.4.1.jar edu.stanford.nlp.process.PTBTokenizer
-preserveLines -lowerCase`` on a file of captions, one a line. `java_tokenize` does the same, one
file per group of sentences, in one subprocess. The jar is the one pycocoevalcap ships (found
without importing it) or the file named by ``MM1_CORENLP_JAR``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

JAR_NAME = "stanford-corenlp-3.4.1.jar"
JAR_ENV = "MM1_CORENLP_JAR"
"""Environment variable naming the CoreNLP 3.4.1 jar when pycocoevalcap is not installed."""
COMMAND = ("edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase")
"""What pycocoevalcap runs (its tokenizer/ptbtokenizer.py)."""
JVM_FLAGS = ("-Xshare:auto", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
"""Start the JVM faster; they change nothing in the output."""


def find_jar() -> Path | None:
    """The CoreNLP 3.4.1 jar: ``$MM1_CORENLP_JAR``, else pycocoevalcap's copy; None if neither exists."""
    if named := os.environ.get(JAR_ENV):
        if not Path(named).is_file():
            raise FileNotFoundError(f"{JAR_ENV}={named}: no such file; point it at {JAR_NAME} or unset it")
        return Path(named)
    spec = importlib.util.find_spec("pycocoevalcap")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        jar = Path(folder) / "tokenizer" / JAR_NAME
        if jar.is_file():
            return jar
    return None


def java_available() -> bool:
    """Whether `java_tokenize` can run: a ``java`` on PATH and the jar."""
    return shutil.which("java") is not None and find_jar() is not None


def java_tokenize(groups: Sequence[Sequence[str]]) -> list[list[str]]:
    """Each group's sentences as the Java PTBTokenizer writes them, one output line a sentence.

    A group is tokenised as one file, as one run of the toolkit tokenises it (the lexer looks ahead
    across lines, never across files); all groups go through one JVM (``-ioFileList``). No sentence
    may hold a line break."""
    jar = find_jar()
    if jar is None or shutil.which("java") is None:
        raise RuntimeError(f"the Java PTB tokenizer needs `java` on PATH and {JAR_NAME} (pip install pycocoevalcap)")
    with tempfile.TemporaryDirectory(prefix="mm1-ptb-") as tmp:
        folder = Path(tmp)
        for k, sentences in enumerate(groups):
            (folder / f"in{k}.txt").write_bytes("\n".join(sentences).encode())
        (folder / "files.txt").write_text("".join(f"in{k}.txt out{k}.txt\n" for k in range(len(groups))))
        command = ["java", *JVM_FLAGS, "-cp", str(jar.resolve()), *COMMAND, "-ioFileList", "files.txt"]
        done = subprocess.run(command, cwd=folder, capture_output=True, check=False)
        if done.returncode != 0:
            stderr = done.stderr.decode(errors="replace")[-500:]
            raise RuntimeError(f"java PTBTokenizer failed (exit {done.returncode}): {stderr}")
        outputs = [(folder / f"out{k}.txt").read_bytes().decode() for k in range(len(groups))]
    lines = [text.split("\n") for text in outputs]
    for sentences, got in zip(groups, lines, strict=True):
        if len(got) < len(sentences):
            raise RuntimeError(f"java PTBTokenizer wrote {len(got)} lines for {len(sentences)} sentences")
    return [got[: len(sentences)] for sentences, got in zip(groups, lines, strict=True)]
