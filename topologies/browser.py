"""Open an HTML file in headless Chromium: does it render, and does it say what it should?

Used by the tests of `iotguard report`: a page can be valid HTML and still
render blank (a broken data: URL, a CSS mistake).  Chromium runs twice, once
for a screenshot and once to dump the DOM, each in a throwaway profile, in its
own process group, with a timeout; the group is killed by its id afterwards so
no helper process (zygote, crashpad) outlives the check.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", "--no-default-browser-check")
WINDOW = "1280,2000"
NONBLANK_SHARE = 0.01


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("chromium not found; run vagrant/provision.sh")


def _run(argv: list[str], timeout: float) -> str:
    """Run Chromium in a fresh process group; its stdout. Kills the group when done."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.communicate()
        raise RuntimeError(f"chromium did not finish within {timeout:g} s: {' '.join(argv)}") from None
    finally:
        _kill_group(proc.pid)
    if proc.returncode != 0:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise RuntimeError(f"chromium exited with status {proc.returncode}: {' | '.join(tail)}")
    return out.decode("utf-8", "replace")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def dom_text(dom: str) -> str:
    """The visible text of a DOM dump, whitespace collapsed."""
    parser = _Text()
    parser.feed(dom)
    return " ".join(" ".join(parser.parts).split())


def nonblank(png_path: str, share: float = NONBLANK_SHARE) -> bool:
    """At least `share` of the pixels differ from the most common colour."""
    import numpy as np
    from matplotlib.image import imread
    img = imread(png_path)
    px = np.round(np.asarray(img, dtype=np.float64) * 255).astype(np.uint32)
    px = px.reshape(-1, px.shape[-1]) if px.ndim == 3 else px.reshape(-1, 1)
    packed = np.zeros(len(px), dtype=np.uint32)
    for c in range(min(px.shape[1], 4)):
        packed |= px[:, c] << np.uint32(8 * c)
    _, counts = np.unique(packed, return_counts=True)
    return bool(len(packed)) and bool(1.0 - counts.max() / len(packed) >= share)


def check_html(path: str, expect: list[str], timeout: float = 60,
               screenshot: str | None = None) -> dict:
    """Render `path` headless: {"screenshot": png, "nonblank": bool, "missing": [texts not in the DOM]}.

    The screenshot goes to `screenshot`, default next to the page (<name>.png).
    """
    exe = chromium()
    page = Path(path).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"{page}: no such file")
    png = os.path.abspath(screenshot or page.with_suffix(".png"))
    url = page.as_uri()
    with tempfile.TemporaryDirectory(prefix="iotguard-chromium-") as profile:
        base = [exe, *FLAGS, f"--user-data-dir={profile}"]
        if os.path.exists(png):
            os.unlink(png)
        _run([*base, f"--screenshot={png}", f"--window-size={WINDOW}", url], timeout)
        if not os.path.isfile(png):
            raise RuntimeError(f"chromium wrote no screenshot to {png}")
        text = dom_text(_run([*base, "--dump-dom", url], timeout))
    return {"screenshot": png, "nonblank": nonblank(png),
            "missing": [t for t in expect if " ".join(t.split()) not in text]}
