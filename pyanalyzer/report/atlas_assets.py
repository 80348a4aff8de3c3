"""The atlas site's style sheet and script (written as ``atlas.css`` and ``atlas.js`` at the
site's root: no external asset, everything works from ``file://`` and offline).

The pages work without the script; it adds sorting and filtering to the layer pages (the
toolbar stays hidden without it).
"""

from __future__ import annotations

__all__ = ["CSS", "JS"]

CSS = """\
:root { color-scheme: light; --fg: #1f2328; --muted: #59636e; --bg: #f4f5f7; --card: #fff;
  --line: #d8dee4; --link: #0b57d0; --accent: #b3261e; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }
body { margin: 0; background: var(--bg); color: var(--fg); line-height: 1.45;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
header, main, footer { max-width: 1200px; margin: 0 auto; padding: 0 16px; }
footer { color: var(--muted); font-size: 13px; padding-top: 24px; padding-bottom: 24px; }
a { color: var(--link); }
h1 { font-size: 22px; margin: 10px 0 6px; overflow-wrap: anywhere; }
h2 { font-size: 18px; margin: 26px 0 8px; }
p { margin: 6px 0; }
.muted { color: var(--muted); }
nav.crumbs { margin-top: 14px; font-size: 14px; overflow-wrap: anywhere; }
nav.pager { display: flex; justify-content: space-between; gap: 12px; margin: 10px 0;
  font-size: 14px; }
img { max-width: 100%; height: auto; }
img.px { image-rendering: pixelated; }
code { background: #e9ebee; padding: 0 4px; border-radius: 3px; overflow-wrap: anywhere; }
dl.facts { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 4px 16px;
  background: var(--card); border: 1px solid var(--line); padding: 12px 14px; margin: 8px 0; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; background: var(--card); border: 1px solid var(--line); }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { background: #eceff3; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.toolbar { display: flex; flex-wrap: wrap; gap: 8px 18px; align-items: center;
  margin: 8px 0 12px; }
.toolbar[hidden] { display: none; }
.toolbar select { font: inherit; max-width: 100%; }
.units { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr));
  gap: 10px; }
.card { background: var(--card); border: 1px solid var(--line); padding: 6px;
  content-visibility: auto; contain-intrinsic-size: auto 230px; }
.card[hidden] { display: none; }
.card .thumbs { display: flex; gap: 4px; }
.card .thumbs a { flex: 1 1 0; min-width: 0; }
.card .thumbs img { display: block; width: 100%; aspect-ratio: 1 / 1; object-fit: contain;
  background: #e9ebee; }
.card .name { font-weight: 600; margin-top: 4px; }
.card .concept { overflow-wrap: anywhere; }
.card .concept.none { color: var(--muted); font-style: italic; }
.badge { display: inline-block; font-size: 12px; padding: 0 5px; border-radius: 8px;
  background: #e6f0e6; color: #1e5b22; }
.figs { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; background: var(--card); border: 1px solid var(--line); padding: 6px; }
figure .pair { display: flex; gap: 4px; }
figure .pair img, figure > img { display: block; width: 112px; }
figure.big > img { width: 224px; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 4px; max-width: 228px;
  overflow-wrap: anywhere; }
.strip { display: flex; flex-wrap: wrap; gap: 12px; }
@media (max-width: 480px) {
  header, main, footer { padding: 0 10px; }
  h1 { font-size: 19px; }
  figure .pair img, figure > img { width: 96px; }
  figure.big > img { width: 100%; max-width: 224px; }
  th, td { padding: 4px 6px; }
}
"""

JS = """\
(function () {
  'use strict';
  var grid = document.getElementById('units');
  var bar = document.getElementById('toolbar');
  if (!grid || !bar) { return; }
  var cards = Array.prototype.slice.call(grid.querySelectorAll('.card'));
  var sort = document.getElementById('sort');
  var category = document.getElementById('category');
  var detectors = document.getElementById('detectors');
  var count = document.getElementById('count');
  var collator = new Intl.Collator('en', { sensitivity: 'base', numeric: true });
  function num(card, key) { return parseFloat(card.getAttribute('data-' + key)); }
  function byUnit(a, b) { return num(a, 'unit') - num(b, 'unit'); }
  function byIou(a, b) { return num(b, 'iou') - num(a, 'iou') || byUnit(a, b); }
  function byLabel(a, b) {
    var la = a.getAttribute('data-label'), lb = b.getAttribute('data-label');
    if (!la !== !lb) { return la ? -1 : 1; }
    return collator.compare(la, lb) || byIou(a, b);
  }
  var orders = { unit: byUnit, iou: byIou, label: byLabel };
  function apply() {
    var order = orders[sort.value] || byUnit;
    var wanted = category.value;
    var only = detectors.checked;
    var shown = 0;
    var frag = document.createDocumentFragment();
    cards.slice().sort(order).forEach(function (card) {
      var ok = (!wanted || card.getAttribute('data-category') === wanted) &&
        (!only || card.getAttribute('data-detector') === '1');
      card.hidden = !ok;
      if (ok) { shown += 1; }
      frag.appendChild(card);
    });
    grid.appendChild(frag);
    count.textContent = shown + ' of ' + cards.length + ' units shown';
  }
  // A link may ask for an order or a filter: layers/<alias>/index.html#sort=iou&category=shape
  location.hash.replace(/^#/, '').split('&').forEach(function (part) {
    var kv = part.split('=');
    var value = decodeURIComponent(kv[1] || '');
    if (kv[0] === 'sort' && orders[value]) { sort.value = value; }
    if (kv[0] === 'category') {
      for (var i = 0; i < category.options.length; i++) {
        if (category.options[i].value === value) { category.value = value; }
      }
    }
    if (kv[0] === 'detectors') { detectors.checked = value === '1'; }
  });
  sort.addEventListener('change', apply);
  category.addEventListener('change', apply);
  detectors.addEventListener('change', apply);
  bar.hidden = false;
  apply();
})();
"""
