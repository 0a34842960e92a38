"""The QC review gallery: well-formed, escaped, self-contained, and its download button
produces exactly the file the labels reviewer reads."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from PIL import Image

from fgclip.data.qc.reviewers import load_labels
from fgclip.data.qc.gallery import BOX_COLOUR_NOISY, GalleryCard, boxed_image_uri, render_gallery, write_gallery

MALICIOUS = "<script>alert(1)</script>"
VOID = {"meta", "img", "input", "br", "hr", "link"}


class PageParser(HTMLParser):
    """Collects what the tests look at and checks that every element is closed in order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.cards: list[str] = []
        self.images: list[str] = []
        self.radios: list[dict[str, str | None]] = []
        self.scripts: list[str] = []
        self.text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "article" and "card" in (attributes.get("class") or "").split():
            self.cards.append(attributes.get("data-item") or "")
        if tag == "img":
            self.images.append(attributes.get("src") or "")
        if tag == "input" and attributes.get("type") == "radio":
            self.radios.append(attributes)
        if tag == "script":
            self._in_script = True
            self.scripts.append("")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    assert parser.errors == [] and parser.stack == [], (parser.errors, parser.stack)
    return parser


def image_bytes(size=(80, 60)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (255, 255, 255)).save(buffer, format="JPEG")
    return buffer.getvalue()


def card(item_id: str, *, noisy: bool = False, caption: str = "a caption", image: bool = True, **changes) -> GalleryCard:
    fields = dict(item_id=item_id, shard="00000", short_expr="a red circle", long_expr="a small red circle",
                  negatives=[f"a {c} circle" for c in ("blue", "green", "pink", "cyan", "gray", "black", "white",
                                                        "brown", "orange", "purple")],
                  caption=caption, noisy=noisy, verdict="bad" if noisy else "ok",
                  verdict_reason="'blue' contradicts" if noisy else "", failures=[("negatives", "duplicate")] if noisy else [],
                  image_uri=boxed_image_uri(image_bytes(), (0.1, 0.1, 0.6, 0.6), noisy=noisy, max_side=64, quality=90)
                  if image else None)
    fields.update(changes)
    return GalleryCard(**fields)


def test_page_is_well_formed_with_one_card_per_item_noisy_first():
    cards = [card("k0#0"), card("k1#0", noisy=True), card("k2#1"), card("k3#0", image=False, image_note="missing")]
    parsed = parse(render_gallery(cards, title="QC", summary=[("p_hat", "1.00%")], gate_passed=False,
                                  gate_message="QC gate failed: ..."))
    assert parsed.cards == ["k1#0", "k0#0", "k2#1", "k3#0"]
    assert len(parsed.radios) == 2 * len(cards)
    assert {r["name"] for r in parsed.radios} == {f"verdict-{i}" for i in range(4)}  # one group per card
    assert "10 negatives" in "".join(parsed.text) and "QC gate failed: ..." in "".join(parsed.text)


def test_untrusted_text_is_escaped():
    attribute_attack = '"><img src=x onerror=alert(2)>'
    page = render_gallery([card("k0#0", caption=MALICIOUS, short_expr=attribute_attack, negatives=[MALICIOUS])], title=MALICIOUS)
    assert MALICIOUS not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    parsed = parse(page)
    assert len(parsed.scripts) == 1 and "alert" not in parsed.scripts[0]  # only our own script runs
    assert len(parsed.images) == 1  # the attack did not add an element
    assert MALICIOUS in parsed.text and attribute_attack in parsed.text  # shown as text, unchanged


def test_images_are_embedded_with_the_box_drawn_in():
    parsed = parse(render_gallery([card("k0#0", noisy=True), card("k1#0", image=False)], title="QC"))
    assert len(parsed.images) == 1 and parsed.images[0].startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(parsed.images[0].split(",", 1)[1]))).convert("RGB")
    assert image.size == (64, 48)  # downscaled to max_side
    red, green, blue = image.getpixel((int(0.1 * 63), int(0.35 * 47)))  # on the box's left edge
    assert red > 180 and green < 90 and blue < 120, (red, green, blue)
    assert image.getpixel((int(0.35 * 63), int(0.35 * 47)))[1] > 200  # inside the box: untouched white
    assert BOX_COLOUR_NOISY[0] > 200


def test_write_gallery_creates_index_html(tmp_path):
    path = write_gallery(tmp_path / "gallery", [card("k0#0")], title="QC")
    assert path == tmp_path / "gallery" / "index.html"
    assert len(parse(path.read_text()).cards) == 1


def test_previous_human_labels_are_preselected():
    parsed = parse(render_gallery([card("k0#0", label="bad"), card("k1#0")], title="QC"))
    checked = [(r["data-item"], r["value"]) for r in parsed.radios if "checked" in r]
    assert checked == [("k0#0", "bad")]


NODE_HARNESS = """
const checked = %(checked)s;
let handler = null, downloaded = null, clicked = false;
global.document = {
  getElementById: (id) => (id === "download-verdicts" ? {addEventListener: (event, fn) => { handler = fn; }} : null),
  querySelectorAll: (selector) => (selector === "input.verdict-choice:checked" ? checked : []),
  createElement: () => ({click() { clicked = true; }, remove() {}}),
  body: {appendChild() {}},
};
global.Blob = function (parts) { this.text = parts.join(""); };
global.URL = {createObjectURL: (blob) => { downloaded = blob.text; return "blob:x"; }};
%(script)s
handler();
if (!clicked) { throw new Error("no download"); }
process.stdout.write(downloaded);
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_download_button_writes_the_labels_reviewers_format(tmp_path):
    parsed = parse(render_gallery([card("k2#1"), card("k0#0", noisy=True), card("k1#3")], title="QC"))
    # What a person ticked: the browser reports the checked radios' data-item and value.
    ticked = {"k0#0": "bad", "k2#1": "ok"}
    checked = [{"dataset": {"item": r["data-item"]}, "value": r["value"]} for r in parsed.radios
               if ticked.get(r["data-item"]) == r["value"]]
    harness = NODE_HARNESS % {"checked": json.dumps(checked), "script": parsed.scripts[0]}
    result = subprocess.run(["node", "-e", harness], capture_output=True, text=True, timeout=20, check=True)
    path = tmp_path / "verdicts.json"
    path.write_text(result.stdout)
    assert load_labels(path) == ticked
    assert list(json.loads(result.stdout)) == sorted(ticked)
