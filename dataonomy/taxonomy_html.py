"""The taxonomy of a selection as one self-contained HTML page (``dataonomy graph --format html``).

The page needs no network: CSS and JavaScript are inline, the tree is embedded as JSON in a
``<script type="application/json" id="taxonomy-data">`` block and drawn by the page's script. The
summary line on top (k, coverage, objective, solver, the greedy comparison) is written as HTML.

- :func:`manifest_summary` (manifest -> the summary's facts) and :func:`open_level` are pure;
  the tree itself is :func:`dataonomy.taxonomy.taxonomy_tree`.
- :func:`render_taxonomy_html` turns them into the page's text; :func:`write_taxonomy_html` writes
  it atomically.

In the page, every tree node is an element with ``class="node internal"`` (a ``<details>``) or
``class="node leaf"`` (a selected class), ``data-wnid``, ``data-name``, ``data-classes`` and
``data-depth``. The search box matches names and wnids (case-insensitive substring), marks hits
with the class ``hit``, opens the path to each, and writes the count into ``#hits``
(``data-hits``: matching nodes, ``data-leaf-hits``: matching selected classes). The page reads a
search from its address: ``view.html#search=tabby``, ``#q=tabby`` or ``?q=tabby``.

WordNet is a DAG, the page a tree: a node with several is-a parents appears under each of them
(with ``data-parents``, and "also under ..." on its line), and the page says so above the tree.
Counts are of distinct classes, so a class shown twice is counted once.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import networkx as nx

from dataonomy.io import atomic_path
from dataonomy.taxonomy import taxonomy_tree

# Rows the page shows before anything is clicked: levels are opened from the top while they fit.
OPEN_ROWS = 40


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _source_text(source: dict) -> str | None:
    if not source:
        return None
    dataset = source.get("dataset") or "source"
    n = source.get("classes")
    classes = f"{n} classes" if isinstance(n, int) else "classes"
    if source.get("pool") == "classifier" or (source.get("root") is None and source.get("description")):
        return (
            f"{dataset}: {classes}, {source.get('description') or 'the classes of the backbone classifier'}"
        )
    text = f"{dataset}: {classes}" + (f" from {source['root']}" if source.get("root") else "")
    if source.get("images_per_class"):
        text += f", {source['images_per_class']} images per class sampled"
    return text


def manifest_summary(manifest: dict) -> dict:
    """The facts of the page's summary line, read from a manifest; a missing key gives None.

    Keys: ``k``, ``coverage``, ``coverage_floor``, ``objective``, ``status``, ``solver``, ``gap``,
    ``greedy`` (None without a greedy section, else ``objective``, ``ratio`` (of the BIP's),
    ``overlap`` and ``violations``, a list of messages), ``target``, ``target_classes``, ``source``
    (one line), ``backbone``, ``affinity``, ``fingerprint``.
    """
    params = _dict(manifest.get("parameters"))
    solver = _dict(manifest.get("solver"))
    greedy = _dict(manifest.get("greedy"))
    target = _dict(manifest.get("target"))
    selected = manifest.get("selected") if isinstance(manifest.get("selected"), list) else []
    violations = [
        str(v.get("message") or v.get("family") or v) if isinstance(v, dict) else str(v)
        for v in (greedy.get("violations") or [])
    ]
    return {
        "k": params.get("k") if isinstance(params.get("k"), int) else (len(selected) or None),
        "coverage": params.get("coverage"),
        "coverage_floor": _number(params.get("coverage_floor")),
        "objective": _number(solver.get("objective")),
        "status": solver.get("status"),
        "solver": solver.get("name"),
        "gap": _number(solver.get("gap")),
        "greedy": {
            "objective": _number(greedy.get("objective")),
            "ratio": _number(greedy.get("objective_ratio_to_bip")),
            "overlap": greedy.get("overlap_with_bip"),
            "violations": violations,
        }
        if greedy
        else None,
        "target": target.get("dataset"),
        "target_classes": [str(c) for c in target.get("classes") or []],
        "source": _source_text(_dict(manifest.get("source"))),
        "backbone": _dict(manifest.get("backbone")).get("name"),
        "affinity": params.get("affinity"),
        "fingerprint": manifest.get("fingerprint"),
    }


def open_level(tree: dict, max_rows: int = OPEN_ROWS) -> int:
    """The deepest tree level to open at first so that at most ``max_rows`` rows show (at least 0).

    Opening levels 0..L shows the nodes of levels 0..L+1. The page also opens a node that is the
    only child of an open node (WordNet's long chains near the root cost one row per node).
    """
    counts: list[int] = []
    stack = [(tree, 0)]
    while stack:
        node, level = stack.pop()
        if level == len(counts):
            counts.append(0)
        counts[level] += 1
        stack.extend((c, level + 1) for c in node.get("children") or [])
    best = 0
    for level in range(len(counts)):
        if sum(counts[: level + 2]) <= max_rows:
            best = level
    return best


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _summary_html(s: dict | None) -> str:
    """The summary line and the context line, escaped."""
    if s is None:
        return '<p class="summary">No manifest given: k, coverage, solver and greedy are not shown.</p>'
    e = html.escape
    if s["coverage"] is None:
        coverage = "coverage n/a"
    elif s["coverage"] == 0:
        coverage = "coverage off"
    else:
        floor = "the default floor" if s["coverage_floor"] is None else f"{s['coverage_floor']:.3g}"
        coverage = f"coverage \u2265 {s['coverage']} classes per target with affinity > {floor}"
    status = s["status"] or "n/a"
    solver = f"solver {status}" + (f" ({s['solver']})" if s["solver"] else "")
    gap = "gap n/a" if s["gap"] is None else ("gap 0" if s["gap"] == 0 else f"gap {s['gap']:.2e}")
    greedy = s["greedy"]
    if greedy is None:
        greedy_text = "greedy top-k: n/a"
    else:
        ratio = "n/a" if greedy["ratio"] is None else f"{100 * greedy['ratio']:.2f} %"
        n_viol = len(greedy["violations"])
        greedy_text = (
            f"greedy top-k: objective {ratio} of the BIP's, {greedy['overlap'] if greedy['overlap'] is not None else 'n/a'}"
            f" of {s['k'] if s['k'] is not None else 'n/a'} classes in common, "
            + (
                f"violates {n_viol} constraint{'s' if n_viol != 1 else ''}"
                if n_viol
                else "no constraint violated"
            )
        )
    stats = [
        ("k", f"k = {s['k'] if s['k'] is not None else 'n/a'}"),
        ("coverage", coverage),
        ("objective", f"objective {_fmt(s['objective'], '.6f')}"),
        ("solver", f"{solver}, {gap}"),
        ("greedy", greedy_text),
    ]
    line = ' <span class="sep">\u00b7</span> '.join(
        f'<span class="stat" data-key="{key}">{e(text)}</span>' for key, text in stats
    )
    classes = s["target_classes"]
    shown = ", ".join(classes[:10]) + (f", \u2026 ({len(classes)} in all)" if len(classes) > 10 else "")
    context = [
        f"target {s['target'] or 'n/a'}" + (f" ({shown})" if classes else ""),
        f"source pool {s['source']}" if s["source"] else None,
        f"backbone {s['backbone']}" if s["backbone"] else None,
        f"affinity {s['affinity']}" if s["affinity"] else None,
    ]
    parts = [f'<p class="summary">{line}</p>']
    dot = " \u00b7 "
    parts.append(f'<p class="context">{e(dot.join(c for c in context if c))}</p>')
    if greedy and greedy["violations"]:
        items = "".join(f"<li>{e(v)}</li>" for v in greedy["violations"])
        parts.append(
            f'<details class="violations"><summary>what greedy top-k violates</summary><ul>{items}</ul></details>'
        )
    return "\n".join(parts)


def _script_json(obj) -> str:
    """JSON that cannot end or confuse the ``<script>`` block it sits in."""
    return (
        json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        .replace("</", "<\\/")
        .replace("<!--", "<\\u0021--")
    )


def render_taxonomy_html(
    tree: dict, summary: dict | None = None, title: str = "Taxonomy", max_open_rows: int = OPEN_ROWS
) -> str:
    """The page's text: ``tree`` from :func:`taxonomy_tree`, ``summary`` from :func:`manifest_summary`."""
    data = {"tree": tree, "open_level": open_level(tree, max_open_rows)}
    parts = {
        "TITLE": html.escape(title),
        "CSS": _CSS,
        "SUMMARY": _summary_html(summary),
        "JS": _JS,
        "DATA": _script_json(data),
    }
    # One pass, so that a class name or title that happens to read like a marker stays as it is.
    return re.sub(r"__(TITLE|CSS|SUMMARY|JS|DATA)__", lambda m: parts[m.group(1)], _PAGE)


def write_taxonomy_html(
    g: nx.DiGraph, path: str | Path, manifest: dict | None = None, title: str | None = None
) -> Path:
    """Write the page of taxonomy graph ``g`` (its summary line from ``manifest``) atomically."""
    summary = manifest_summary(manifest) if manifest is not None else None
    text = render_taxonomy_html(taxonomy_tree(g), summary, title or "Taxonomy")
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
__CSS__
</style>
</head>
<body>
<header>
<h1>__TITLE__</h1>
__SUMMARY__
<div class="controls">
<input id="search" type="search" placeholder="search a class name or wnid" autocomplete="off" spellcheck="false">
<label><input id="only" type="checkbox" checked> only matches</label>
<button type="button" id="expand">expand all</button>
<button type="button" id="collapse">collapse all</button>
<span id="hits" data-hits="0" data-leaf-hits="0"></span>
</div>
</header>
<p class="dagnote">WordNet is not a tree: a node with several is-a parents appears under each of them
(marked &ldquo;also under&rdquo;); counts and sums count each selected class once. Depth is the shortest is-a
path from the root.</p>
<main id="tree"></main>
<noscript><p class="noscript">The tree is drawn by JavaScript; its data is in the taxonomy-data block of this file.</p></noscript>
<script type="application/json" id="taxonomy-data">__DATA__</script>
<script>
__JS__
</script>
</body>
</html>
"""

_CSS = """
body { margin: 0; color: #222; background: #fff;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { position: sticky; top: 0; z-index: 1; background: #f7f7f7; border-bottom: 1px solid #ddd;
  padding: 8px 16px; }
h1 { font-size: 18px; margin: 0 0 4px; }
p { margin: 2px 0; }
.summary .stat { white-space: nowrap; }
.summary .sep { color: #999; margin: 0 4px; }
.context { color: #666; font-size: 12.5px; }
.violations { font-size: 12.5px; color: #666; }
.violations ul { margin: 2px 0; }
.controls { display: flex; flex-wrap: wrap; align-items: center; gap: 10px; margin-top: 6px; }
#search { width: 320px; padding: 4px 8px; font-size: 14px; }
#hits { color: #444; }
main { padding: 8px 16px 48px; }
summary { cursor: pointer; padding: 1px 0; }
.children { margin-left: 9px; padding-left: 12px; border-left: 1px dotted #bbb; }
.name { font-weight: 600; }
.leaf > .line .name { color: #1f77b4; }
.internal.selected > summary .name { color: #1f77b4; }
.wnid { color: #777; font-size: 12px; margin-left: 6px; }
.count { color: #1f77b4; margin-left: 8px; }
.aff { color: #a11d1e; margin-left: 8px; font-variant-numeric: tabular-nums; }
.bar { display: inline-block; width: 80px; height: 7px; margin-left: 8px; background: #eee;
  vertical-align: middle; }
.bar .fill { display: block; height: 100%; background: #d62728; }
.leaf { padding: 2px 0 3px 16px; }
.targets { display: flex; flex-wrap: wrap; gap: 4px; margin-top: 1px; }
.t { font-size: 11.5px; padding: 0 5px; border-radius: 3px; font-variant-numeric: tabular-nums; }
.t .tn { color: #444; margin-right: 4px; }
.hit > summary > .name, .hit > .line > .name { background: #fff2a8; outline: 1px solid #d9b700; }
.hidden { display: none; }
.dagnote { color: #666; font-size: 12.5px; margin: 6px 16px 0; }
.also { color: #777; font-size: 12px; margin-left: 8px; font-style: italic; }
.noscript { padding: 16px; }
"""

_JS = r"""
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("taxonomy-data").textContent);
  var root = DATA.tree;
  var targets = root.targets || [];
  var openLevel = DATA.open_level;
  var main = document.getElementById("tree");
  var input = document.getElementById("search");
  var only = document.getElementById("only");
  var status = document.getElementById("hits");
  var records = [];
  var rootSum = root.affinity_sum || 0;
  var maxAff = {};

  function walk(d, f) {
    f(d);
    (d.children || []).forEach(function (c) { walk(c, f); });
  }
  walk(root, function (d) {
    if (!d.children) {
      targets.forEach(function (t) { maxAff[t] = Math.max(maxAff[t] || 0, d.affinity[t] || 0); });
    }
  });

  function fmt(v) {
    if (!v) return "0";
    return Math.abs(v) >= 0.001 ? v.toFixed(4) : v.toExponential(2);
  }
  function make(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function head(d, into, parentName) {
    into.appendChild(make("span", "name", d.name));
    if (d.wnid) into.appendChild(make("code", "wnid", d.wnid));
    if (d.parents && d.parents.length > 1) {
      var others = d.parents.filter(function (p) { return p !== parentName; });
      into.appendChild(make("span", "also", "also under " + others.join(", ")));
    }
  }
  function bar(d) {
    var share = rootSum > 0 ? 100 * d.affinity_sum / rootSum : 0;
    var b = make("span", "bar");
    var f = make("span", "fill");
    f.style.width = Math.min(100, share) + "%";
    b.appendChild(f);
    b.title = share.toFixed(1) + " % of the selection's summed affinity";
    return b;
  }
  function perTarget(d) {
    return targets.map(function (t) { return t + " " + fmt(d.affinity[t] || 0); }).join("\n");
  }

  function build(d, parent, level, parentOpen, into) {
    var r = { d: d, parent: parent, kids: [], key: (d.name + " " + (d.wnid || "")).toLowerCase() };
    records.push(r);
    var e;
    if (d.children) {
      var open = level <= openLevel || (parentOpen && d.children.length === 1);
      r.defaultOpen = open;
      e = make("details", "node internal" + (d.selected ? " selected" : ""));
      e.open = open;
      var s = make("summary");
      head(d, s, parent ? parent.d.name : null);
      s.appendChild(make("span", "count", d.classes + (d.classes === 1 ? " class" : " classes")));
      s.appendChild(make("span", "aff", "\u03a3 affinity " + fmt(d.affinity_sum)));
      s.appendChild(bar(d));
      s.title = "affinity summed over the classes below, per target class:\n" + perTarget(d);
      e.appendChild(s);
      var box = make("div", "children");
      e.appendChild(box);
      d.children.forEach(function (c) { r.kids.push(build(c, r, level + 1, open, box)); });
    } else {
      e = make("div", "node leaf");
      var line = make("div", "line");
      head(d, line, parent && parent.d.wnid !== d.wnid ? parent.d.name : (parent && parent.parent ? parent.parent.d.name : null));
      line.appendChild(make("span", "aff", "\u03a3 affinity " + fmt(d.affinity_sum)));
      line.appendChild(bar(d));
      e.appendChild(line);
      var cells = make("div", "targets");
      targets.forEach(function (t) {
        var v = d.affinity[t] || 0;
        var cell = make("span", "t");
        cell.setAttribute("data-target", t);
        cell.title = "affinity of " + d.name + " to target class " + t;
        cell.appendChild(make("span", "tn", t));
        cell.appendChild(make("span", "tv", fmt(v)));
        var a = maxAff[t] > 0 ? v / maxAff[t] : 0;
        cell.style.background = "rgba(214, 39, 40, " + (0.06 + 0.5 * a).toFixed(3) + ")";
        cells.appendChild(cell);
      });
      e.appendChild(cells);
    }
    if (d.wnid) e.setAttribute("data-wnid", d.wnid);
    if (d.parents) e.setAttribute("data-parents", d.parents.join("|"));
    e.setAttribute("data-name", d.name);
    e.setAttribute("data-classes", String(d.classes));
    e.setAttribute("data-depth", String(d.depth));
    r.el = e;
    into.appendChild(e);
    return r;
  }

  function search(raw, rememberInUrl) {
    var text = (raw || "").trim();
    var q = text.toLowerCase();
    var hits = 0, leafHits = 0, first = null, i, r, seen = {};
    for (i = 0; i < records.length; i++) {
      r = records[i];
      r.hit = q !== "" && r.key.indexOf(q) >= 0;
      r.el.classList.toggle("hit", r.hit);
      if (r.hit) {
        // A node shown under several parents is one match.
        var id = (r.d.children ? "n:" : "l:") + (r.d.wnid || r.d.name);
        if (!seen[id]) {
          seen[id] = true;
          hits++;
          if (!r.d.children) leafHits++;
        }
        if (!first) first = r;
      }
    }
    // Records are in pre-order: backwards, every node comes after its children.
    for (i = records.length - 1; i >= 0; i--) {
      r = records[i];
      r.below = r.hit || r.kids.some(function (k) { return k.below; });
    }
    for (i = 0; i < records.length; i++) {
      r = records[i];
      r.above = !!r.parent && (r.parent.hit || r.parent.above);
      var show = q === "" || !only.checked || r.below || r.above;
      r.el.classList.toggle("hidden", !show);
      if (r.d.children) {
        r.el.open = q === "" ? r.defaultOpen : r.kids.some(function (k) { return k.below; });
      }
    }
    status.setAttribute("data-hits", String(hits));
    status.setAttribute("data-leaf-hits", String(leafHits));
    status.setAttribute("data-query", text);
    if (q === "") {
      var seen = {}, wordnet = 0;
      records.forEach(function (r) {
        if (r.d.children && r.d.wnid && !seen[r.d.wnid]) { seen[r.d.wnid] = true; wordnet++; }
      });
      status.textContent = root.classes + " selected classes, " + wordnet + " WordNet nodes";
    } else if (hits === 0) {
      status.textContent = "no match for \u201c" + text + "\u201d";
    } else {
      status.textContent = hits + (hits === 1 ? " match" : " matches") + " (" + leafHits + " selected " +
        (leafHits === 1 ? "class" : "classes") + ")";
    }
    if (first) (first.d.children ? first.el.firstChild : first.el).scrollIntoView({ block: "center" });
    if (rememberInUrl) {
      try {
        history.replaceState(null, "", q === "" ? location.pathname + location.search : "#search=" + encodeURIComponent(text));
      } catch (err) { /* a page opened from disk may refuse; the search still works */ }
    }
  }

  function fromUrl() {
    var hash = new URLSearchParams(location.hash.replace(/^#/, ""));
    var query = new URLSearchParams(location.search);
    return hash.get("search") || hash.get("q") || query.get("search") || query.get("q") || "";
  }

  build(root, null, 0, true, main);
  main.setAttribute("data-leaves", String(records.filter(function (r) { return !r.d.children; }).length));
  main.setAttribute("data-internal", String(records.filter(function (r) { return !!r.d.children; }).length));
  input.value = fromUrl();
  search(input.value, false);
  input.addEventListener("input", function () { search(input.value, true); });
  only.addEventListener("change", function () { search(input.value, false); });
  window.addEventListener("hashchange", function () {
    var q = fromUrl();
    if (q !== input.value) { input.value = q; search(q, false); }
  });
  document.getElementById("expand").addEventListener("click", function () {
    records.forEach(function (r) { if (r.d.children) r.el.open = true; });
  });
  document.getElementById("collapse").addEventListener("click", function () {
    records.forEach(function (r) { if (r.d.children) r.el.open = !r.parent; });
  });
  document.body.setAttribute("data-ready", "true");
})();
"""
