"""Opens the documentation site in a real browser, as a newcomer would, and saves screenshots.

Builds the site (``mkdocs build --strict``), serves ``site/`` on localhost, starts headless Chromium
through Playwright, clicks from the front page to every page of the navigation, and on each page
checks what a strict build cannot see: that the page loads, every image renders, every code block
has a language, no table or code block is wider than the page without its own scroll bar, and no
list, table or fence is left as plain text. It also types into the site's search, as a reader does. Then
it saves screenshots of the front page, the evaluation page and the config reference into
``docs/img/``. Prints one line per page and exits 1 when any page has a problem.

Needs Chromium and Playwright, neither of which facetrain needs otherwise:
  apt-get install chromium          # Debian's build, /usr/bin/chromium
  pip install playwright            # the Python driver only: it drives the browser above
Usage (from the repository root):
  python scripts/docs_screens.py [--no-build] [--chromium /usr/bin/chromium] [--out docs/img]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHOTS = {"front.png": "", "evaluation.png": "evaluation/", "config.png": "config/"}
# Flags for a closed network: no background requests, no sandbox as root, a fresh profile each time.
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
FLAGS += ["--disable-component-update", "--disable-sync", "--disable-quic"]

# Run in the page: what looks wrong to a reader, as a list of strings.
PROBLEMS_JS = r"""() => {
  const found = [];
  const main = document.querySelector('.md-content');
  for (const img of document.querySelectorAll('.md-content img')) {
    if (!img.complete || img.naturalWidth === 0) found.push('image does not render: ' + img.getAttribute('src'));
  }
  for (const code of document.querySelectorAll('.md-content pre > code')) {
    const block = code.closest('div.highlight') || code.parentElement;
    const named = [...block.classList, ...code.classList].some(c => c.startsWith('language-'));
    if (!named) found.push('code block without a language: ' + code.textContent.slice(0, 50));
  }
  for (const el of document.querySelectorAll('.md-content table, .md-content pre')) {
    let box = el, scrolls = false;
    while (box && box !== main) {
      const style = getComputedStyle(box);
      if (['auto', 'scroll'].includes(style.overflowX)) { scrolls = true; break; }
      box = box.parentElement;
    }
    const right = el.getBoundingClientRect().right;
    if (!scrolls && right > main.getBoundingClientRect().right + 1) found.push('overflows the page: ' + el.tagName);
  }
  // Markdown that did not turn into HTML: a list without a blank line before it or nested by two
  // spaces, a table or a fence that the parser passed over.
  for (const el of document.querySelectorAll('.md-content p, .md-content li')) {
    const own = [...el.childNodes].filter(n => n.nodeType === Node.TEXT_NODE).map(n => n.textContent).join('');
    if (/(^|\n)\s*([-*]|\d+\.) \S/.test(own)) found.push('a list shown as text: ' + own.trim().slice(0, 50));
    if (/\|---|```/.test(el.textContent)) found.push('a table or fence shown as text: ' + el.textContent.slice(0, 50));
  }
  return found;
}"""


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def nav_links(page, base: str) -> list[str]:
    hrefs = page.eval_on_selector_all(".md-nav--primary a.md-nav__link[href]", "els => els.map(e => e.href)")
    seen: list[str] = []
    for href in hrefs:
        href = href.split("#")[0]
        if href.startswith(base) and href not in seen:
            seen.append(href)
    return seen


def search_finds(page, base: str, words: str, wanted: str) -> bool:
    """The site's search, typed into as a reader does, lists the page ``wanted`` for ``words``."""
    page.goto(base)
    page.locator("label.md-search__icon, .md-search__input").first.click()
    page.locator(".md-search__input").fill(words)
    try:
        page.wait_for_selector(".md-search-result__item", timeout=15_000)
    except Exception:
        print(f"FAIL search for {words!r}: no result")
        return False
    hrefs = page.eval_on_selector_all(".md-search-result__item a", "els => els.map(e => e.href)")
    found = any(href.split("#")[0].split("?")[0] == base + wanted for href in hrefs)  # ?h= highlights the words
    print(f"{'ok  ' if found else 'FAIL'} search for {words!r}: {len(hrefs)} results, /{wanted} among them: {found}")
    return found


def walk(browser, base: str, out: Path) -> int:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(base)
    links = nav_links(page, base)
    failures = 0
    for href in links:
        page.goto(base)  # every page is reached by a click from the front page, as a reader does
        relative = href[len(base) :]
        selector = f'.md-nav--primary a.md-nav__link[href$="{relative or "."}"]' if relative else None
        if selector and page.locator(selector).count():
            page.locator(selector).first.click()
        else:
            response = page.goto(href)
            if response is None or not response.ok:
                print(f"FAIL {href}: HTTP {response.status if response else 'no response'}")
                failures += 1
                continue
        page.wait_for_load_state("load")
        title = page.title()
        problems = page.evaluate(PROBLEMS_JS)
        failures += bool(problems)
        print(f"{'FAIL' if problems else 'ok  '} /{relative}  {title}" + "".join(f"\n     {p}" for p in problems))
    failures += not search_finds(page, base, "Partial FC", "distributed/")
    for name, relative in SHOTS.items():
        page.goto(base + relative)
        page.wait_for_load_state("load")
        page.screenshot(path=str(out / name))
        print(f"screenshot: {out / name}")
    print(f"{len(links)} pages, {failures} with problems")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-build", action="store_true", help="use the site/ already built")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the browser to drive")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img", help="folder for the screenshots")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    if not args.no_build:
        subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q"], cwd=REPO, check=True)
    args.out.mkdir(parents=True, exist_ok=True)
    server, base = serve(REPO / "site")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=FLAGS)
            try:
                return 1 if walk(browser, base, args.out) else 0
            finally:
                browser.close()
    finally:
        server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
