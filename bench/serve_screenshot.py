"""The picture of catdog-serve's page in docs/serving.md: a server with Grad-CAM on a checkpoint, the page in
headless Chromium (selenium; Debian's chromium and chromium-driver), a few photos uploaded through the file input,
one screenshot.

    python bench/serve_screenshot.py --ckpt RUN --images ../shared/data/dogs-vs-cats/test/1.jpg ... --out docs/serve.png
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from catdog.serving.client import ServerProcess


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--images", nargs="+", required=True, help="photos to upload (a non-image shows an error)")
    p.add_argument("--tta", type=int, default=0)
    p.add_argument("--out", default="docs/serve.png")
    p.add_argument("--size", default="1180,760", help="window width,height")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="serve_shot_"))
    server_args = [f"ckpt={args.ckpt}", f"tta={args.tta}", "serve.gradcam=true", f"hydra.run.dir={work / 'log'}"]
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={work / 'profile'}", f"--window-size={args.size}",
    ):  # fmt: skip
        options.add_argument(flag)
    with ServerProcess(server_args, cwd=work, log=str(work / "server.log")) as server:
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            driver.get(server.url + "/")
            files = "\n".join(str(Path(i).resolve()) for i in args.images)  # several files: one per line
            driver.find_element("css selector", "#files").send_keys(files)
            WebDriverWait(driver, 120).until(
                lambda d: len(d.find_elements("css selector", ".result[data-status]")) == len(args.images)
            )
            WebDriverWait(driver, 10).until(lambda d: d.execute_script(
                "return [...document.images].every(i => i.complete)"
            ))  # fmt: skip
            driver.save_screenshot(args.out)
        finally:
            driver.quit()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
