"""The QC review gallery: one self-contained static HTML page.

Everything is inline (CSS, a small script, images as data: URIs), so the page can be
opened from an MLflow artifact, a CI job's download or an e-mail without a server.
Every piece of text is HTML-escaped: captions and expressions come from web alt-text and
model output, so they are untrusted.

A person marks each card ok or bad and downloads the verdicts as JSON,
`{"<key>#<region>": "ok" | "bad", ...}`, which is exactly the file the `labels` reviewer
of `fgclip qc` reads (`--labels verdicts.json --set qc.reviewer=labels`).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from PIL import Image, ImageDraw

from fgclip.core.storage import path_in, write_text_atomic

# Presentation only: how a box is drawn onto the gallery's copy of the image.
BOX_COLOUR_NOISY = (230, 20, 60)
BOX_COLOUR_CLEAN = (20, 200, 80)
BOX_LINE_FRACTION = 0.008  # line width as a fraction of the longest image side
MIN_BOX_LINE_PX = 2

VERDICT_CHOICES = ("ok", "bad")  # what a person can answer; the labels reviewer reads the same words
DOWNLOAD_NAME = "verdicts.json"


@dataclass(frozen=True)
class GalleryCard:
    """What one card shows; plain data, so the page does not depend on the QC core."""

    item_id: str  # "<key>#<region>": the key of the downloaded verdicts
    shard: str
    short_expr: str
    long_expr: str
    negatives: Sequence[str]
    caption: str
    noisy: bool
    verdict: str  # the reviewer's verdict word
    verdict_reason: str = ""
    failures: Sequence[tuple[str, str]] = field(default_factory=tuple)  # (check, reason)
    image_uri: str | None = None  # data: URI of the image with its box drawn in
    image_note: str = ""  # why there is no image
    label: str | None = None  # a verdict to pre-select (an earlier human label)


def boxed_image_uri(image_bytes: bytes, bbox: Sequence[float], *, noisy: bool, max_side: int, quality: int) -> str:
    """A downscaled JPEG copy of the image with the (normalised) box drawn in, as a data: URI."""
    with Image.open(io.BytesIO(image_bytes)) as source:
        image = source.convert("RGB")
    image.thumbnail((max_side, max_side))
    width, height = image.size
    coords = list(bbox)
    # A box the validators rejected (wrong arity, NaN) is shown without a frame; its
    # failure is listed on the card.
    if len(coords) == 4 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in coords):
        x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in coords)
        line = max(MIN_BOX_LINE_PX, round(BOX_LINE_FRACTION * max(width, height)))
        left, right = sorted((x1 * (width - 1), x2 * (width - 1)))
        top, bottom = sorted((y1 * (height - 1), y2 * (height - 1)))
        ImageDraw.Draw(image).rectangle((left, top, right, bottom), outline=BOX_COLOUR_NOISY if noisy else BOX_COLOUR_CLEAN,
                                        width=line)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; background: #f4f4f6; color: #222; }
header { margin-bottom: 1rem; }
.summary span { display: inline-block; margin-right: 1.2rem; }
.gate-failed { color: #b00020; font-weight: bold; }
.gate-passed { color: #0a7a2f; font-weight: bold; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 1rem; }
.card { background: #fff; border: 2px solid #ccd; border-radius: 8px; padding: .8rem; }
.card.noisy { border-color: #e0143c; }
.card img { max-width: 100%; height: auto; display: block; margin-bottom: .5rem; }
.card h2 { font-size: .95rem; margin: 0 0 .4rem; word-break: break-all; }
.noimage { padding: 2rem; background: #eee; color: #666; text-align: center; }
.verdict { font-weight: bold; }
.verdict.bad { color: #b00020; }
.verdict.ok { color: #0a7a2f; }
.failures { color: #b00020; margin: .3rem 0; padding-left: 1.2rem; }
dt { font-weight: bold; font-size: .8rem; color: #555; }
dd { margin: 0 0 .4rem 0; }
ol.negatives { margin: .2rem 0; padding-left: 1.6rem; font-size: .9rem; }
.caption { font-size: .85rem; color: #444; }
fieldset { border: 1px solid #ccd; border-radius: 6px; margin-top: .5rem; }
"""

# Collects the checked ok/bad radios into {"<key>#<region>": "ok"|"bad"} (sorted by
# id) and downloads it. Kept free of "</" so it cannot end its own <script> element.
SCRIPT = """
(function () {
  function collect() {
    var verdicts = {};
    document.querySelectorAll("input.verdict-choice:checked").forEach(function (input) {
      verdicts[input.dataset.item] = input.value;
    });
    var ordered = {};
    Object.keys(verdicts).sort().forEach(function (id) { ordered[id] = verdicts[id]; });
    return ordered;
  }
  document.getElementById("download-verdicts").addEventListener("click", function () {
    var text = JSON.stringify(collect(), null, 1);
    var blob = new Blob([text], {type: "application/json"});
    var link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "__DOWNLOAD_NAME__";
    document.body.appendChild(link);
    link.click();
    link.remove();
  });
})();
"""


def _text(value: object) -> str:
    return escape(str(value), quote=True)


def _card(card: GalleryCard, index: int) -> str:
    classes = "card noisy" if card.noisy else "card"
    parts = [f'<article class="{classes}" data-item="{_text(card.item_id)}">']
    if card.image_uri:
        parts.append(f'<img src="{_text(card.image_uri)}" alt="{_text(card.item_id)}">')
    else:
        parts.append(f'<div class="noimage">image unavailable{": " + _text(card.image_note) if card.image_note else ""}</div>')
    parts.append(f"<h2>{_text(card.item_id)} <small>shard {_text(card.shard)}</small></h2>")
    verdict_class = "bad" if card.verdict == "bad" else "ok" if card.verdict == "ok" else "other"
    reason = f" &mdash; {_text(card.verdict_reason)}" if card.verdict_reason else ""
    parts.append(f'<p class="verdict {verdict_class}">reviewer: {_text(card.verdict)}{reason}</p>')
    if card.failures:
        items = "".join(f"<li><b>{_text(check)}</b>: {_text(reason)}</li>" for check, reason in card.failures)
        parts.append(f'<ul class="failures">{items}</ul>')
    parts.append(f"<dl><dt>short expression</dt><dd>{_text(card.short_expr)}</dd>"
                 f"<dt>long expression</dt><dd>{_text(card.long_expr)}</dd></dl>")
    negatives = "".join(f"<li>{_text(text)}</li>" for text in card.negatives)
    parts.append(f'<details open><summary>{len(card.negatives)} negatives</summary>'
                 f'<ol class="negatives">{negatives}</ol></details>')
    parts.append(f'<details><summary>caption</summary><p class="caption">{_text(card.caption)}</p></details>')
    radios = []
    for choice in VERDICT_CHOICES:
        checked = " checked" if card.label == choice else ""
        radios.append(f'<label><input type="radio" class="verdict-choice" name="verdict-{index}" value="{choice}" '
                      f'data-item="{_text(card.item_id)}"{checked}> {choice}</label>')
    parts.append(f"<fieldset><legend>your verdict</legend>{' '.join(radios)}</fieldset>")
    parts.append("</article>")
    return "\n".join(parts)


def ordered_cards(cards: Sequence[GalleryCard]) -> list[GalleryCard]:
    """Noisy items first (what a reviewer must look at), then by item id."""
    return sorted(cards, key=lambda card: (not card.noisy, card.item_id))


def render_gallery(cards: Sequence[GalleryCard], *, title: str, summary: Sequence[tuple[str, str]] = (),
                   gate_passed: bool | None = None, gate_message: str = "") -> str:
    """The whole page as one HTML string."""
    summary_html = "".join(f"<span><b>{_text(label)}</b> {_text(value)}</span>" for label, value in summary)
    gate_html = ""
    if gate_message:
        gate_class = "gate-passed" if gate_passed else "gate-failed"
        gate_html = f'<p class="{gate_class}">{_text(gate_message)}</p>'
    body = "\n".join(_card(card, index) for index, card in enumerate(ordered_cards(cards)))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{_text(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<header>
<h1>{_text(title)}</h1>
{gate_html}
<p class="summary">{summary_html}</p>
<p>{len(cards)} cards, noisy first. Mark each card ok or bad, then
<button type="button" id="download-verdicts">download verdicts (JSON)</button>
and rerun with <code>--labels {DOWNLOAD_NAME} --set qc.reviewer=labels</code>.</p>
</header>
<main>
{body}
</main>
<script>{SCRIPT.replace("__DOWNLOAD_NAME__", DOWNLOAD_NAME)}</script>
</body>
</html>
"""


def write_gallery(folder: str | Path, cards: Sequence[GalleryCard], *, title: str,
                  summary: Sequence[tuple[str, str]] = (), gate_passed: bool | None = None, gate_message: str = "") -> str | Path:
    """Write `folder/index.html` (a local folder or an s3:// prefix) atomically; returns its path."""
    target = path_in(folder, "index.html")
    write_text_atomic(target, render_gallery(cards, title=title, summary=summary, gate_passed=gate_passed,
                                             gate_message=gate_message))
    return target
