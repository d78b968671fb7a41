"""The offline HTML annotation form: one file, no network, the export's data embedded as JSON.

Every text from a model or a dataset is put on the page with ``textContent`` (never parsed as HTML), the
work is written to ``localStorage`` (key ``medbench-experts:<export id>``) on every change and restored on load
with the name of whose work it is and a button that sets it aside (kept under ``<key>:<name>``) for the next
annotator on a shared computer, and "Save annotations" downloads the annotations file that
``medbench experts import`` reads.
"""

from __future__ import annotations

import html
import json
from typing import Any

STORAGE_PREFIX = "medbench-experts:"

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1d2430;background:#f5f6f8}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ccd;padding:.6rem 1rem;display:flex;gap:1rem;align-items:center;flex-wrap:wrap;z-index:2}
header h1{font-size:1.05rem;margin:0}
main{max-width:1100px;margin:auto;padding:1rem}
.item{background:#fff;border:1px solid #ccd;border-radius:6px;margin:1rem 0;padding:1rem}
.item h2{font-size:1rem;margin:.1rem 0 .6rem}
.case{display:flex;gap:1rem;flex-wrap:wrap}
.case img{max-width:360px;max-height:360px;border:1px solid #ddd}
.case .texts{flex:1;min-width:280px}
.label{font-weight:600;font-size:.85rem;color:#455}
.text{white-space:pre-wrap;background:#f7f7fa;border-radius:4px;padding:.4rem .6rem;margin:.2rem 0 .6rem}
.output{border-top:1px dashed #ccd;margin-top:.8rem;padding-top:.6rem}
.output.done h3::after{content:" \\2713";color:#1a7f37}
.output h3{font-size:.95rem;margin:.2rem 0}
fieldset{border:1px solid #dde;border-radius:4px;margin:.4rem 0;padding:.3rem .6rem}
legend{font-size:.85rem;font-weight:600}
fieldset label{display:inline-block;margin:.15rem .9rem .15rem 0;font-size:.9rem}
.types .group{margin:.2rem 0}
.types .group b{font-size:.8rem;display:block;color:#455}
textarea{width:100%;min-height:2.5rem}
#message{color:#b42318;font-weight:600}
details{background:#fff;border:1px solid #ccd;border-radius:6px;padding:.6rem 1rem}
"""

_SCRIPT = r"""
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("medbench-export").textContent);
  const rubric = data.rubric;
  const storageKey = "__STORAGE_PREFIX__" + data.export_id;
  const $ = (tag, attrs, text) => {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const choice = (type, name, value, labelText, title) => {
    const label = $("label", title ? {title: title} : {});
    const input = $("input", {type: type, name: name, value: String(value)});
    label.append(input, " " + labelText);
    return label;
  };

  function renderRubric() {
    const box = document.getElementById("rubric");
    box.append($("summary", {}, "Rubric " + rubric.name + " v" + rubric.version + " (error taxonomy v" + rubric.taxonomy_version + ")"));
    box.append($("p", {}, rubric.instructions));
    for (const [name, spec] of Object.entries(rubric.fields)) {
      box.append($("p", {class: "label"}, spec.question));
      const list = $("ul");
      for (const level of spec.levels || []) list.append($("li", {}, (String(level.value) === level.label ? level.label : level.value + " (" + level.label + ")") + ": " + (level.help || "")));
      if (spec.kind === "taxonomy") for (const entry of rubric.error_types) list.append($("li", {}, entry.key + ": " + entry.description));
      box.append(list);
    }
  }

  function renderOutput(item, output) {
    const box = $("div", {class: "output", "data-code": output.code});
    box.append($("h3", {}, "Output " + output.code));
    box.append($("div", {class: "text output-text"}, output.text));
    const base = item.item_id + ":" + output.code;
    for (const field of ["correctness", "severity"]) {
      const spec = rubric.fields[field];
      const set = $("fieldset", {"data-field": field});
      set.append($("legend", {}, spec.question));
      for (const level of spec.levels) set.append(choice("radio", field + ":" + base, level.value, String(level.value) === level.label ? level.label : level.value + " " + level.label, level.help));
      box.append(set);
    }
    const types = $("fieldset", {"data-field": "error_types", class: "types"});
    types.append($("legend", {}, rubric.fields.error_types.question));
    let group = null;
    for (const entry of rubric.error_types) {
      if (entry.key === entry.category) {
        group = $("div", {class: "group"});
        group.append($("b", {}, entry.key.replace(/_/g, " ")));
        types.append(group);
        group.append(choice("checkbox", "error_types:" + base, entry.key, "(general)", entry.description));
      } else {
        group.append(choice("checkbox", "error_types:" + base, entry.key, entry.key.replace(/_/g, " "), entry.description));
      }
    }
    box.append(types);
    const comment = $("textarea", {name: "comment:" + base, placeholder: rubric.fields.comment.question});
    box.append(comment);
    return box;
  }

  function renderItem(item, index) {
    const section = $("section", {class: "item", "data-item": item.item_id});
    section.append($("h2", {}, (index + 1) + " / " + data.items.length + " \u00b7 " + item.item_id + " \u00b7 " + item.task));
    const caseBox = $("div", {class: "case"});
    if (item.image) caseBox.append($("img", {src: item.image, alt: "image of " + item.item_id}));
    const texts = $("div", {class: "texts"});
    texts.append($("div", {class: "label"}, "Question / prompt"), $("div", {class: "text prompt"}, item.prompt));
    texts.append($("div", {class: "label"}, "Reference"), $("div", {class: "text reference"}, item.reference));
    caseBox.append(texts);
    section.append(caseBox);
    for (const output of item.outputs) section.append(renderOutput(item, output));
    if (item.pair && rubric.pairwise) {
      const set = $("fieldset", {"data-field": "preference"});
      set.append($("legend", {}, rubric.pairwise.question + " (" + item.pair[0] + " vs " + item.pair[1] + ")"));
      set.append(choice("radio", "preference:" + item.item_id, item.pair[0], "Output " + item.pair[0]));
      set.append(choice("radio", "preference:" + item.item_id, item.pair[1], "Output " + item.pair[1]));
      set.append(choice("radio", "preference:" + item.item_id, "tie", "tie"));
      section.append(set);
    }
    return section;
  }

  function collect() {
    const state = {annotator: document.getElementById("annotator").value.trim(), items: {}};
    const checked = (name) => {
      const node = document.querySelector('input[name="' + CSS.escape(name) + '"]:checked');
      return node ? node.value : null;
    };
    let done = 0, total = 0;
    for (const item of data.items) {
      const entry = {outputs: {}, preference: checked("preference:" + item.item_id)};
      for (const output of item.outputs) {
        const base = item.item_id + ":" + output.code;
        const correctness = checked("correctness:" + base);
        const values = {
          correctness: correctness === null ? null : Number(correctness),
          severity: checked("severity:" + base),
          error_types: Array.from(document.querySelectorAll('input[name="' + CSS.escape("error_types:" + base) + '"]:checked')).map((n) => n.value),
          comment: document.querySelector('textarea[name="' + CSS.escape("comment:" + base) + '"]').value,
        };
        entry.outputs[output.code] = values;
        total += 1;
        const complete = values.correctness !== null && values.severity !== null;
        if (complete) done += 1;
        document.querySelector('section[data-item="' + item.item_id + '"] .output[data-code="' + output.code + '"]').classList.toggle("done", complete);
      }
      state.items[item.item_id] = entry;
    }
    document.getElementById("progress").textContent = done + " of " + total + " outputs graded";
    return state;
  }

  // Grading a page of outputs fires many events: write once the annotator pauses, and at once on leaving.
  let pending = null;
  function schedule() {
    if (pending !== null) clearTimeout(pending);
    pending = setTimeout(persist, 150);
  }

  function persist() {
    if (pending !== null) clearTimeout(pending);
    pending = null;
    const state = collect();
    try {
      localStorage.setItem(storageKey, JSON.stringify({saved_at: new Date().toISOString(), state: state}));
      document.getElementById("stored").textContent = "kept in this browser";
    } catch (error) {
      document.getElementById("stored").textContent = "not kept in this browser (" + error.name + "): save to a file often";
    }
  }

  function restore() {
    let stored = null;
    try { stored = JSON.parse(localStorage.getItem(storageKey) || "null"); } catch (error) { stored = null; }
    if (!stored || !stored.state) return false;
    const state = stored.state;
    document.getElementById("annotator").value = state.annotator || "";
    const tick = (name, value) => {
      if (value === null || value === undefined) return;
      const node = document.querySelector('input[name="' + CSS.escape(name) + '"][value="' + CSS.escape(String(value)) + '"]');
      if (node) node.checked = true;
    };
    for (const [itemId, entry] of Object.entries(state.items || {})) {
      tick("preference:" + itemId, entry.preference);
      for (const [code, values] of Object.entries(entry.outputs || {})) {
        const base = itemId + ":" + code;
        tick("correctness:" + base, values.correctness);
        tick("severity:" + base, values.severity);
        for (const key of values.error_types || []) tick("error_types:" + base, key);
        const comment = document.querySelector('textarea[name="' + CSS.escape("comment:" + base) + '"]');
        if (comment) comment.value = values.comment || "";
      }
    }
    return true;
  }

  function annotationsDocument() {
    const state = collect();
    return {
      schema: data.annotations_schema,
      export_id: data.export_id,
      rubric: {name: rubric.name, version: rubric.version},
      annotator: state.annotator,
      saved_at: new Date().toISOString(),
      items: state.items,
    };
  }

  function save() {
    const message = document.getElementById("message");
    const doc = annotationsDocument();
    if (!doc.annotator) {
      message.textContent = "Enter your name (annotator) before saving.";
      document.getElementById("annotator").focus();
      return null;
    }
    message.textContent = "";
    const slug = doc.annotator.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "") || "annotator";
    const name = "annotations_" + data.export_id + "_" + slug + ".json";
    const blob = new Blob([JSON.stringify(doc, null, 2) + "\n"], {type: "application/json"});
    const link = $("a", {href: URL.createObjectURL(blob), download: name});
    document.body.append(link);
    link.click();
    link.remove();
    document.getElementById("stored").textContent = "saved " + name;
    return name;
  }

  // On a shared computer the next annotator must not grade on top of (or under the name of) the previous one:
  // restored work says whose it is, and one click sets it aside (kept under that name) for an empty form.
  function slug(name) {
    return name.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "") || "annotator";
  }

  function startNew() {
    persist();
    const previous = localStorage.getItem(storageKey);
    const name = document.getElementById("annotator").value.trim();
    if (previous !== null) localStorage.setItem(storageKey + ":" + slug(name), previous);
    localStorage.removeItem(storageKey);
    for (const node of document.querySelectorAll("#items input")) node.checked = false;
    for (const node of document.querySelectorAll("#items textarea")) node.value = "";
    document.getElementById("annotator").value = "";
    document.getElementById("previous").hidden = true;
    document.getElementById("stored").textContent = name ? "the work of " + name + " is kept in this browser" : "";
    collect();
    document.getElementById("annotator").focus();
  }

  renderRubric();
  const main = document.getElementById("items");
  data.items.forEach((item, index) => main.append(renderItem(item, index)));
  const restored = restore();
  const restoredName = document.getElementById("annotator").value.trim();
  if (restored && restoredName) {
    document.getElementById("previous-name").textContent = restoredName;
    document.getElementById("previous").hidden = false;
  }
  document.getElementById("start-new").addEventListener("click", startNew);
  collect();
  document.body.addEventListener("input", schedule);
  document.body.addEventListener("change", schedule);
  window.addEventListener("pagehide", persist);
  document.addEventListener("visibilitychange", () => { if (document.visibilityState === "hidden") persist(); });
  document.getElementById("save").addEventListener("click", save);
  window.medbenchExperts = {collect: collect, persist: persist, annotationsDocument: annotationsDocument, save: save, restored: restored, storageKey: storageKey, startNew: startNew};
})();
"""


def render_form(payload: dict[str, Any]) -> str:
    """The self-contained form page for an export payload (see :func:`medbench.experts.export.form_payload`)."""
    # `<` escaped so no text can close the data element early.
    embedded = json.dumps(payload, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    title = f"Expert review {payload['export_id']}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1>"
        "<label>Annotator <input id=\"annotator\" autocomplete=\"off\" placeholder=\"your name\"></label>"
        "<span id=\"previous\" hidden>Restored the work of <b id=\"previous-name\"></b> from this browser. "
        "<button id=\"start-new\" type=\"button\">Not you? Start an empty form</button></span>"
        "<span id=\"progress\"></span><button id=\"save\" type=\"button\">Save annotations</button>"
        "<span id=\"stored\"></span><span id=\"message\" role=\"alert\"></span></header>"
        "<main><details id=\"rubric\"></details><div id=\"items\"></div></main>"
        f"<script type=\"application/json\" id=\"medbench-export\">{embedded}</script>"
        f"<script>{_SCRIPT.replace('__STORAGE_PREFIX__', STORAGE_PREFIX)}</script>"
        "</body></html>\n"
    )
