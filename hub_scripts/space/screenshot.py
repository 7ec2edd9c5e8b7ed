"""The page of the app with its first example answered, as headless Chromium shows it (the README's picture).

    python -m hub_scripts.space.screenshot --model embedded:salad --output docs/space.png

Chromium comes from the distribution (`apt-get install chromium`, which `make system-packages` does as root) and is
driven by Playwright; nothing is downloaded.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from playwright.sync_api import expect, sync_playwright
from trl import TrlParser

from .local import SpaceArguments, launch_local

# An answer is a few seconds on two CPU cores; the first one also loads and warms the model.
ANSWER_TIMEOUT_MS = 180_000


@dataclass
class ScreenshotArguments(SpaceArguments):
    output: str = field(default="docs/space.png", metadata={"help": "Where the PNG goes."})
    chromium: str | None = field(
        default=None, metadata={"help": "The Chromium binary (default: `chromium` on the PATH)."}
    )


def find_chromium(explicit: str | None = None) -> str:
    """The Chromium binary, or a `FileNotFoundError` that says how to install it."""
    binary = explicit or shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise FileNotFoundError(
            "No Chromium found: install it with `sudo apt-get install chromium` (or pass --chromium PATH)."
        )
    return binary


def screenshot_answered_example(url: str, output: str, chromium: str) -> str:
    """Open the page, pick the first example, press Answer, wait until the answer and what the model heard are
    written, and save the page as a PNG. Returns the answer."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.locator("#examples button").first.click()
        expect(page.locator("#question a[download]")).to_be_attached()  # the example's audio has loaded
        page.get_by_role("button", name="Answer", exact=True).click()
        heard = page.locator("#transcript textarea")
        last_written = heard if heard.is_visible() else page.locator("#answer textarea")
        expect(last_written).not_to_have_value("", timeout=ANSWER_TIMEOUT_MS)
        answer = page.locator("#answer textarea").input_value()
        page.screenshot(path=output, full_page=True)
        browser.close()
    return answer


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((ScreenshotArguments,)).parse_args_and_config(args=argv)
    chromium = find_chromium(args.chromium)
    demo, url = launch_local(args, block=False)
    try:
        answer = screenshot_answered_example(url, args.output, chromium)
    finally:
        demo.close()
    print(f"Wrote {args.output} (first example answered: {answer!r}).")


if __name__ == "__main__":
    main()
