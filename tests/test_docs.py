"""README.md and docs/*.md: every relative link and anchor resolves, every file path they name
exists, and every ``bcnn-triton`` command in their bash blocks is accepted by the CLI's parser.

The ``>>>`` examples of the same files run as doctests (pyproject.toml: ``--doctest-glob``), and
docs/deploy.md's commands run in tests/test_docs_deploy.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from bcnn_triton.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A repository path in running text or a command: `bench/summarize.py`, `tests/kernels`.
REPO_PATH = re.compile(r"(?<![\w/.~-])((?:bench|kernels|tests|bcnn_triton|docs|\.ci)/[\w./+-]*)")


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def prose(text: str) -> str:
    """The text without fenced blocks and inline code spans (links inside those are not links)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, and -1, -2...
    appended to repeated ones."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *$", FENCE.sub("", page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f"{slug}-{count}"] = 1
    return set(seen)


def bash_commands(text: str) -> list[list[str]]:
    """Each command of the bash blocks, as words: comments dropped, ``\\`` continuations joined,
    ``a && b`` split."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:
                end = words.index("&&") if "&&" in words else len(words)
                commands.append(words[:end])
                words = words[end + 1 :]
    return commands


def cli_arguments(words: list[str]) -> list[str] | None:
    """The arguments given to bcnn-triton (directly, or ``-m bcnn_triton`` under python or
    torchrun), or None for another command."""
    if words[:1] == ["bcnn-triton"]:
        return words[1:]
    if "-m" in words and words[words.index("-m") + 1 :][:1] == ["bcnn_triton"]:
        return words[words.index("-m") + 2 :]
    return None


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(ROOT)}")
        elif anchor and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    assert not broken, f"{page_id(page)}:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_named_repository_files_exist(page):
    named = {match.rstrip(".,") for match in REPO_PATH.findall(page.read_text())}
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, f"{page_id(page)} names files that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_cli_commands_parse(page):
    parser = build_parser()
    refused = []
    for words in bash_commands(page.read_text()):
        arguments = cli_arguments(words)
        if arguments is None:
            continue
        try:
            parser.parse_args(arguments)
        except SystemExit:
            refused.append(shlex.join(words))
    assert not refused, f"{page_id(page)}: the CLI refuses\n" + "\n".join(refused)


def test_the_checks_find_what_they_look_for(tmp_path):
    """The helpers above see links, anchors and commands where pages have them."""
    page = tmp_path / "page.md"
    page.write_text(
        "# A title: with `code`\n## A title: with code\n[x](page.md#a-title-with-code-1)\n"
        "```bash\nbcnn-triton eval runs/x \\\n  --split val  # comment\n"
        "pip install -e . && python -m bcnn_triton train --epochs 2\n```\n`[not](a-link.md)`\n"
    )
    assert anchors(page) == {"a-title-with-code", "a-title-with-code-1"}
    assert LINK.findall(prose(page.read_text())) == ["page.md#a-title-with-code-1"]
    commands = [cli_arguments(words) for words in bash_commands(page.read_text())]
    assert commands == [["eval", "runs/x", "--split", "val"], None, ["train", "--epochs", "2"]]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--no-such-flag"])
