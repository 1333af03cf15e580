"""Full-page screenshot of a search report in headless Chromium (for docs and review).

    python bench/report_screenshot.py RUN OUT.png [--width 1280] [--thumbnail docs/report.png]

Needs Debian's chromium and chromium-driver (the test suite installs them) and selenium.
Prints whether every image loaded and any browser console errors.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image


def screenshot(index: Path, out: Path, width: int) -> tuple[list[bool], list[str]]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as profile:
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", f"--window-size={width},900",
                     f"--user-data-dir={profile}"):
            opts.add_argument(flag)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        try:
            driver.get(index.resolve().as_uri())
            loaded = driver.execute_script(
                "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
            errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            driver.set_window_size(width, driver.execute_script(
                "return document.body.scrollHeight"))
            driver.save_screenshot(str(out))
        finally:
            driver.quit()
    return loaded, errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--thumbnail", type=Path, help="also write the top of the page, scaled "
                   "down, as a small PNG (for the README)")
    args = p.parse_args()
    loaded, errors = screenshot(args.run / "report" / "index.html", args.out, args.width)
    print(f"{sum(loaded)}/{len(loaded)} images loaded; console errors: {errors or 'none'}; "
          f"wrote {args.out}")
    if args.thumbnail:
        args.thumbnail.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(args.out) as im:
            top = im.crop((0, 0, im.width, min(im.height, int(im.width * 1.25))))
            top.thumbnail((760, 950))
            top.convert("P", palette=Image.Palette.ADAPTIVE, colors=128).save(
                args.thumbnail, optimize=True)
        print(f"wrote {args.thumbnail} ({args.thumbnail.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
