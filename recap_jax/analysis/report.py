"""The HTML report: one static page (no server) with the statistics, the plots and a gallery.

The gallery shows sampled images with both captions, their lengths, CLIP scores and health
flags side by side; buttons filter it by flag (plain JavaScript, also `report.html#flag=NAME`).
Every caption is inserted as text, never as HTML.
"""

from __future__ import annotations

import html
import json
from typing import Any

from recap_jax.analysis.health import FLAGS

_STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; }
table.stats td, table.stats th { padding: 3px 10px; border-bottom: 1px solid #ddd; text-align: left; }
.plots img { max-width: 480px; margin: 6px; border: 1px solid #ddd; }
.filters button { margin: 3px; padding: 4px 10px; }
.filters button.active { background: #1f77b4; color: white; }
#gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.card { width: 560px; border: 1px solid #ccc; border-radius: 6px; padding: 8px; display: flex; gap: 8px; }
.card img { width: 160px; height: 160px; object-fit: contain; background: #f4f4f4; }
.card .noimage { width: 160px; height: 160px; background: #eee; color: #888; display: flex;
                 align-items: center; justify-content: center; font-size: 12px; }
.caption { font-size: 13px; margin: 4px 0; }
.meta { font-size: 11px; color: #666; }
.flag { font-size: 11px; background: #d62728; color: white; border-radius: 3px; padding: 1px 5px; margin-right: 3px; }
.top { display: flex; gap: 40px; } .top ol { font-size: 13px; }
"""

_SCRIPT = """
(function () {
  const items = JSON.parse(document.getElementById('gallery-data').textContent);
  const gallery = document.getElementById('gallery');
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function score(v) { return v === null || v === undefined ? 'n/a' : v.toFixed(4); }
  for (const item of items) {
    const card = el('div', 'card');
    card.dataset.flags = item.flags.join(' ');
    if (item.image) {
      const img = el('img'); img.src = item.image; img.alt = item.key; card.appendChild(img);
    } else {
      card.appendChild(el('div', 'noimage', 'no image in this dataset'));
    }
    const text = el('div');
    text.appendChild(el('div', 'meta', 'key ' + item.key + (item.url ? ' \\u00b7 ' + item.url : '')));
    const flags = el('div');
    for (const f of item.flags) flags.appendChild(el('span', 'flag', f));
    text.appendChild(flags);
    text.appendChild(el('div', 'caption', 'original: ' + item.org_caption));
    text.appendChild(el('div', 'meta', item.org_words + ' words \\u00b7 CLIP ' + score(item.org_clip_score)));
    text.appendChild(el('div', 'caption', 'recaption: ' + item.re_caption));
    text.appendChild(el('div', 'meta', item.re_words + ' words' +
        (item.re_tokens === null ? '' : ' \\u00b7 ' + item.re_tokens + ' tokens') +
        ' \\u00b7 CLIP ' + score(item.re_clip_score)));
    card.appendChild(text);
    gallery.appendChild(card);
  }
  const buttons = document.querySelectorAll('.filters button');
  function apply(flag) {
    let shown = 0;
    for (const card of gallery.children) {
      const flags = card.dataset.flags ? card.dataset.flags.split(' ') : [];
      const show = flag === 'all' || (flag === 'none' ? flags.length === 0 : flags.includes(flag));
      card.style.display = show ? '' : 'none';
      shown += show ? 1 : 0;
    }
    for (const b of buttons) b.classList.toggle('active', b.dataset.flag === flag);
    document.getElementById('shown').textContent = shown + ' of ' + items.length + ' shown';
    gallery.dataset.shown = shown;
  }
  for (const b of buttons) b.addEventListener('click', () => apply(b.dataset.flag));
  const match = /flag=([a-z]+)/.exec(window.location.hash);
  apply(match ? match[1] : 'all');
  document.body.dataset.ready = 'true';
})();
"""


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    if percent:
        return f"{100 * value:.2f}%"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _stats_rows(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = [("rows", _fmt(s["num_rows"]), ""),
            ("mean length (words)", _fmt(s["org_words"]["mean"]), _fmt(s["re_words"]["mean"])),
            ("median / p95 / max (words)", *(" / ".join(_fmt(s[f"{side}_words"][k]) for k in ("median", "p95", "max"))
                                             for side in ("org", "re")))]
    if s["org_tokens"] or s["re_tokens"]:
        rows.append(("mean length (tokens)", *(_fmt(s[f"{side}_tokens"]["mean"]) if s[f"{side}_tokens"] else "n/a"
                                               for side in ("org", "re"))))
    rows += [("vocabulary size", _fmt(s["org_vocab_size"]), _fmt(s["re_vocab_size"])),
             ("share of the joint vocabulary", _fmt(s["org_share_of_joint_vocab"], True),
              _fmt(s["re_share_of_joint_vocab"], True)),
             ("empty captions", _fmt(s["org_empty"]), _fmt(s["flags"]["empty"]))]
    if "clip" in s:
        c = s["clip"]
        rows += [("mean CLIP score", _fmt(c["org_mean_score"]), _fmt(c["re_mean_score"])),
                 ("pairwise CLIP win rate", _fmt(c["org_win_rate"], True), _fmt(c["re_win_rate"], True))]
    return rows


def render(summary: dict[str, Any], gallery: list[dict[str, Any]]) -> str:
    """The page as a string (images and plots are referenced relative to it)."""
    e = html.escape
    stats = "".join(f"<tr><th>{e(a)}</th><td>{e(b)}</td><td>{e(c)}</td></tr>" for a, b, c in _stats_rows(summary))
    flags = "".join(f"<tr><th>{e(f)}</th><td>{summary['flags'][f]}</td><td>"
                    f"{100 * summary['flags'][f] / max(summary['num_rows'], 1):.2f}%</td></tr>" for f in FLAGS)
    tops = "".join(f"<div><h3>top words: {label}</h3><ol>"
                   + "".join(f"<li>{e(w)} ({n})</li>" for w, n in summary[f"{side}_top_words"]) + "</ol></div>"
                   for side, label in (("org", "original"), ("re", "recaption")))
    plot_imgs = "".join(f'<img src="{e(name)}" alt="{e(key)}">' for key, name in summary.get("plots", {}).items())
    in_gallery = {f: sum(f in i["flags"] for i in gallery) for f in FLAGS}
    buttons = (f'<button data-flag="all">all ({len(gallery)})</button>'
               f'<button data-flag="none">no flag ({sum(not i["flags"] for i in gallery)})</button>'
               + "".join(f'<button data-flag="{f}">{f} ({in_gallery[f]})</button>' for f in FLAGS))
    items = [{k: v for k, v in i.items() if k != "priority"} for i in gallery]
    data = json.dumps(items).replace("</", "<\\/")  # a caption must not close the script element
    clip = (f"CLIP: {e(str(summary.get('clip_model')))} (text length {summary.get('clip_text_length')})"
            if summary.get("clip_model") else "no CLIP scores (run with --clip)")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>recap_jax analysis: {e(str(summary.get("source", "")))}</title>
<style>{_STYLE}</style></head>
<body>
<h1>Recaption analysis</h1>
<p class="meta">{e(str(summary.get("source", "")))} &middot; {summary["num_rows"]} rows &middot; {clip} &middot;
token lengths: {e(str(summary.get("token_lengths_from", "")))}</p>
<h2>Statistics</h2>
<table class="stats"><tr><th></th><th>original</th><th>recaption</th></tr>{stats}</table>
<h2>Health flags (recaptions)</h2>
<table class="stats"><tr><th>flag</th><th>count</th><th>share</th></tr>{flags}</table>
<div class="top">{tops}</div>
<h2>Plots</h2><div class="plots">{plot_imgs}</div>
<h2>Gallery</h2>
<div class="filters">{buttons} <span id="shown" class="meta"></span></div>
<div id="gallery"></div>
<script id="gallery-data" type="application/json">{data}</script>
<script>{_SCRIPT}</script>
</body></html>
"""


def write_report(path: str, summary: dict[str, Any], gallery: list[dict[str, Any]]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(render(summary, gallery))
    return path
