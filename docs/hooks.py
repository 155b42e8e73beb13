"""mkdocs hooks of the documentation site (mkdocs.yml ``hooks:``).

- The flags reference: ``flags.md`` holds the marker line ``<!-- flags reference -->``, which is
  replaced at build time by ``l2d.options.flags_reference(l2d.cli.train_option_groups())``, the
  tables derived from the option declarations, so the page is never written by hand.
- The README's figures: the files of ``img/`` at the repository's root are added to the site
  under ``img/``, so that the pages show them without a copy in ``docs/``.
"""

import sys
from pathlib import Path

from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- flags reference -->"
FLAGS_PAGE = "flags.md"
IMAGES = "img"


def flags_reference() -> str:
    """The tables of every flag of ``l2d train`` that sets an option, from the checkout's l2d."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from l2d.cli import train_option_groups
    from l2d.options import flags_reference as reference

    return reference(train_option_groups())


def on_files(files, config):
    """Add the repository's ``img/`` (the figures of the results) to the site."""
    for path in sorted((REPO / IMAGES).rglob("*")):
        if path.is_file():
            files.append(File(path.relative_to(REPO).as_posix(), src_dir=str(REPO),
                              dest_dir=config["site_dir"],
                              use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    """Replace the marker line of ``flags.md`` with the generated flags reference."""
    if page.file.src_uri != FLAGS_PAGE:
        return markdown
    lines = markdown.splitlines(keepends=True)
    marked = [i for i, line in enumerate(lines) if line.strip() == MARKER]
    if len(marked) != 1:
        raise ValueError(f"{FLAGS_PAGE}: expected one line {MARKER!r}, found {len(marked)}")
    lines[marked[0]] = flags_reference() + "\n"
    return "".join(lines)
