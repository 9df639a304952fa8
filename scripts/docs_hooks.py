"""MkDocs hooks (mkdocs.yml: hooks): what the site builds from sources that live outside docs/.

- The site's front page is README.md itself, its links to ``docs/<page>.md`` made relative to the site.
- The config reference's table is written from the config classes at every build
  (``scripts/config_reference.py``), so the site cannot drift from the code.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
config_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(config_reference)


def front_page(readme: str) -> str:
    """README.md as the site's index page: ``](docs/x.md`` becomes ``](x.md``."""
    return re.sub(r"\]\(docs/", "](", readme)


def on_files(files, config):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "index.md", content=front_page(readme)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == "config.md":
        return config_reference.render(markdown)
    return markdown
