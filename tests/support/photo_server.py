"""A loopback web server of real photos (the ones scikit-image, scikit-learn and matplotlib
ship) and hostile URLs, for the ingest tests: 404, 500, a response slower than any
timeout, an HTML page, a truncated JPEG, a redirect to a photo, a redirect loop, an image
over the size limit, a tiny image and a photo its server opts out of AI use for
(X-Robots-Tag: noai). It counts the requests of every path, so a test can tell what a
rerun fetched again."""

from __future__ import annotations

import http.server
import io
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from tests.support.servers import free_port

#: Real photos: (name, file) from the installed packages.
PHOTO_NAMES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "motorcycle_left",
    "china",
    "flower",
    "grace_hopper",
)
#: Hostile URL -> the failure kind ingest must report for it.
HOSTILE = {
    "missing.jpg": "http_404",
    "broken.jpg": "http_500",
    "slow.jpg": "timeout",
    "page.jpg": "not_an_image",
    "truncated.jpg": "decode_error",
    "loop.jpg": "redirect_loop",
    "huge.jpg": "too_large",
    "tiny.png": "too_small",
    "optout.jpg": "disallowed",
}
#: A redirect to a good photo arrives like the photo itself.
REDIRECT = "moved.jpg"


def photo_files() -> dict[str, Path]:
    import matplotlib
    import skimage
    import sklearn

    skimage_data = Path(skimage.__file__).parent / "data"
    sklearn_images = Path(sklearn.__file__).parent / "datasets" / "images"
    mpl_samples = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"
    files = {}
    for name in PHOTO_NAMES:
        for candidate in (
            skimage_data / f"{name}.png",
            skimage_data / f"{name}.jpg",
            sklearn_images / f"{name}.jpg",
            mpl_samples / f"{name}.jpg",
        ):
            if candidate.is_file():
                files[name] = candidate
                break
        else:
            raise FileNotFoundError(f"no packaged photo {name!r}")
    return files


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


@dataclass
class PhotoSite:
    base: str
    requests: Counter = field(default_factory=Counter)
    photos: dict[str, bytes] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def good_urls(self) -> list[str]:
        return [self.url(f"photos/{name}") for name in sorted(self.photos)]


def build_content(huge_side: int) -> dict[str, tuple[int, dict[str, str], bytes]]:
    """path -> (status, headers, body) of everything but the special responses."""
    content: dict[str, tuple[int, dict[str, str], bytes]] = {}
    for name, path in photo_files().items():
        data = path.read_bytes()
        kind = "image/png" if path.suffix == ".png" else "image/jpeg"
        content[f"photos/{name}"] = (200, {"Content-Type": kind}, data)
    good = _jpeg(Image.open(photo_files()["chelsea"]))
    content["page.jpg"] = (200, {"Content-Type": "text/html"}, b"<!doctype html><html><body>Not here</body></html>")
    content["truncated.jpg"] = (200, {"Content-Type": "image/jpeg"}, good[: len(good) // 2])
    content["huge.jpg"] = (200, {"Content-Type": "image/jpeg"}, _jpeg(Image.new("RGB", (huge_side, huge_side), "gray")))
    content["tiny.png"] = (200, {"Content-Type": "image/png"}, _png(Image.new("RGB", (8, 8), "red")))
    content["optout.jpg"] = (200, {"Content-Type": "image/jpeg", "X-Robots-Tag": "noai, noimageai"}, good)
    return content


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@contextmanager
def photo_site(*, slow_s: float = 4.0, huge_side: int = 5000) -> Iterator[PhotoSite]:
    """The site on a free 127.0.0.1 port; `slow.jpg` answers after `slow_s` seconds."""
    content = build_content(huge_side)
    site = PhotoSite("", photos={k.split("/", 1)[1]: v[2] for k, v in content.items() if k.startswith("photos/")})
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            path = self.path.lstrip("/")
            with lock:
                site.requests[path] += 1
            if path == "missing.jpg" or (
                path not in content and path not in ("broken.jpg", "slow.jpg", REDIRECT, "loop.jpg")
            ):
                return self._send(404, {"Content-Type": "text/plain"}, b"not found")
            if path == "broken.jpg":
                return self._send(500, {"Content-Type": "text/plain"}, b"server error")
            if path == "slow.jpg":
                time.sleep(slow_s)
                return self._send(200, {"Content-Type": "image/jpeg"}, content["photos/chelsea"][2])
            if path == REDIRECT:
                return self._send(302, {"Location": "/photos/coffee"}, b"")
            if path == "loop.jpg":
                return self._send(302, {"Location": "/loop.jpg"}, b"")
            status, headers, body = content[path]
            return self._send(status, headers, body)

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout): nothing left to say

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    site.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
