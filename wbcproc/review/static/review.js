// The slide view: a gallery of the cells by class, reviewed with the keyboard (or the mouse); every change
// is saved at once as a draft on the server, which answers with the differential signing would give.
"use strict";
(function () {
  const W = window.WBC;
  let state = JSON.parse(document.getElementById("state").textContent);
  let focus = 0; // index into the gallery order
  let queue = Promise.resolve();
  const gallery = document.getElementById("gallery");
  const banner = document.getElementById("banner");

  function order() {
    // cells grouped by their current class, in the report's class order; the report's order within a class
    const out = [];
    for (const k of state.classes) for (const c of state.cells) if (c.class === k) out.push(c);
    return out;
  }

  function pct(v) { return v === null || v === undefined ? "-" : v.toFixed(1); }

  function renderSummary() {
    const p = state.preview;
    const rows = state.classes.filter((k) => k in p.percent).map((k) => {
      const ref = p.reference[k] || [null, null];
      const out = p.percent[k] !== null && (p.percent[k] < ref[0] || p.percent[k] > ref[1]);
      const ci = p.ci95[k] ? `${pct(p.ci95[k][0])}-${pct(p.ci95[k][1])}` : "-";
      return `<tr class="${out ? "out" : ""}"><td>${k}</td><td>${p.counts[k]}</td><td>${pct(p.percent[k])}</td>` +
        `<td>${ci}</td><td>${ref[0]}-${ref[1]}</td></tr>`;
    }).join("");
    const flags = p.flags.map((f) => `<span class="flag" title="${f.message}">${f.code}</span>`).join(" ") || "none";
    const withheld = p.withheld.map((f) => `<span class="flag withheld" title="${f.message}">${f.code}</span>`).join(" ");
    document.getElementById("summary").innerHTML =
      `<table class="diff" id="differential"><tr><th>class</th><th>count</th><th>%</th><th>95% CI</th><th>reference %</th></tr>${rows}</table>` +
      `<p>WBC counted: <b>${p.wbc_total}</b>. Flags: ${flags}${withheld ? ". Withheld until verified: " + withheld : ""}.</p>` +
      `<p id="progress">Marked cells still to review: <b id="open">${p.open}</b>; changed by review: <b id="changed">${p.changed}</b>.` +
      (state.for_adaptation ? ` Cells suggested for adapting the model (A): <b id="for-adaptation">${state.for_adaptation}</b> - give each its true class.` : "") + `</p>`;
  }

  function renderGallery() {
    const cells = order();
    focus = Math.max(0, Math.min(focus, cells.length - 1));
    let html = "";
    let i = 0;
    for (const k of state.classes) {
      const mine = cells.filter((c) => c.class === k);
      if (!mine.length) continue;
      html += `<div class="klass" data-class="${k}"><h3>${k} (${mine.length})</h3><div class="cells">`;
      for (const c of mine) {
        const cls = ["cell", c.mark === "flag" ? "flag-driver" : c.mark === "review" ? "review" : "",
          c.reviewed ? (c.class !== c.model_class ? "changed" : "reviewed") : "", i === focus ? "focus" : "",
          c.adapt ? "for-adaptation" : ""].join(" ");
        const note = c.class !== c.model_class ? `model: ${c.model_class}` : `${(c.confidence * 100).toFixed(0)}%`;
        html += `<div class="${cls}" data-i="${i}" data-file="${c.file}" tabindex="-1" draggable="true" title="${c.file}; model ${c.model_class} ` +
          `${c.confidence.toFixed(3)}, runner-up ${c.runner_up}"><img loading="lazy" src="${W.thumbs}${c.n}" alt="${c.file}">` +
          `${c.mark ? "&#9679; " : ""}${c.adapt ? '<span class="adapt" title="suggested for adapting the model to this laboratory">A</span> ' : ""}` +
          `${c.reviewed ? "&#10003; " : ""}${note}</div>`;
        i++;
      }
      html += "</div></div>";
    }
    // drop targets for every class, also those with no cell yet: drag a cell onto one to reclassify it
    const bar = state.classes.map((k, j) => `<span class="drop" data-class="${k}">${j + 1} ${k}</span>`).join("");
    gallery.innerHTML = `<div class="dropbar" title="drag a cell onto a class to reclassify it">${bar}</div>` + html;
    const f = gallery.querySelector(".cell.focus");
    if (f) f.scrollIntoView({ block: "nearest" });
  }

  function render() { renderSummary(); renderGallery(); }

  function show(msg) { banner.textContent = msg; banner.hidden = !msg; }

  async function post(url, body) {
    const r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": W.csrf },
      body: JSON.stringify(body), credentials: "same-origin" });
    let data = {};
    try { data = await r.json(); } catch (e) { data = { error: r.statusText }; }
    return { status: r.status, data };
  }

  function change(cell, cls) {
    // the new class shows at once; the save goes out in order, each from the version the last one returned
    cell.class = cls === null ? cell.model_class : cls;
    cell.reviewed = cls !== null;
    render();
    queue = queue.then(async () => {
      const { status, data } = await post(W.base + "draft", { base_version: state.draft_version, changes: { [cell.file]: cls } });
      if (status === 200) {
        state = Object.assign(data.state, {});
        show(data.merged ? `Merged with ${data.merged} cell(s) another reviewer saved meanwhile.` : "");
      } else if (status === 409) {
        state = data.state;
        show(`Not saved: ${data.error} Their class is shown; change it again if you disagree.`);
      } else if (status === 401) {
        show("Your session has ended: log in again (the saved cells are kept).");
        return;
      } else {
        show(`Not saved: ${data.error || status}`);
      }
      render();
    });
  }

  function neighbour(dir) {
    const cells = [...gallery.querySelectorAll(".cell")];
    if (dir === "left") return Math.max(0, focus - 1);
    if (dir === "right") return Math.min(cells.length - 1, focus + 1);
    const cur = cells[focus].getBoundingClientRect();
    let best = focus, bestD = Infinity;
    cells.forEach((el, i) => {
      const r = el.getBoundingClientRect();
      const dy = dir === "down" ? r.top - cur.top : cur.top - r.top;
      if (dy <= 1) return;
      const d = dy * 1000 + Math.abs(r.left - cur.left);
      if (d < bestD) { bestD = d; best = i; }
    });
    return best;
  }

  function zoom(on) {
    const z = document.getElementById("zoom");
    if (!on) { z.hidden = true; return; }
    const c = order()[focus];
    z.querySelector("img").src = `${W.thumbs}${c.n}`;
    const field = z.querySelector(".field");
    field.hidden = !c.field;
    if (c.field) { // the cell on its field: the overview with this cell's box outlined
      const [x0, y0, x1, y1] = c.field.box;
      field.querySelector("img").src = `${W.base}fields/${c.field.n}`;
      Object.assign(field.querySelector(".box").style, { left: `${x0}px`, top: `${y0}px`, width: `${x1 - x0}px`, height: `${y1 - y0}px` });
      field.querySelector("figcaption").textContent = `Field ${c.field.file}: this cell outlined in blue.`;
    }
    z.querySelector("p").textContent = `${c.file}: ${c.class}` + (c.class !== c.model_class ? ` (model ${c.model_class})` : "") +
      `; model confidence ${c.confidence.toFixed(3)}, runner-up ${c.runner_up}`;
    z.hidden = false;
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.target.tagName === "INPUT") return;
    const cells = order();
    if (!cells.length) return;
    const c = cells[focus];
    const keys = { ArrowLeft: "left", ArrowRight: "right", ArrowUp: "up", ArrowDown: "down" };
    if (keys[ev.key]) { focus = neighbour(keys[ev.key]); renderGallery(); zoom(false); }
    else if (/^[1-8]$/.test(ev.key)) {
      const next = cells[focus + 1];
      change(c, state.classes[Number(ev.key) - 1]);
      const at = order().indexOf(next); // the focus stays where the reviewer was reading
      if (next && at >= 0) { focus = at; renderGallery(); }
    }
    else if (ev.key === "Enter" && ev.shiftKey) {
      for (const x of cells.filter((x) => x.class === c.class && x.mark && !x.reviewed)) change(x, x.class);
    }
    else if (ev.key === "Enter" || ev.key === " ") { change(c, c.class); focus = Math.min(focus + 1, cells.length - 1); }
    else if (ev.key === "Backspace" && c.reviewed) change(c, null);
    else if (ev.key === "z" || ev.key === "Z") zoom(document.getElementById("zoom").hidden);
    else if (ev.key === "Escape") zoom(false);
    else return;
    ev.preventDefault();
  });

  gallery.addEventListener("click", (ev) => {
    const el = ev.target.closest(".cell");
    if (!el) return;
    focus = Number(el.dataset.i);
    renderGallery();
    if (ev.detail === 2) zoom(true);
  });

  // drag and drop: a cell dragged onto a class section or onto the bar of classes takes that class
  gallery.addEventListener("dragstart", (ev) => {
    const el = ev.target.closest(".cell");
    if (!el) return;
    ev.dataTransfer.setData("text/plain", el.dataset.i);
    ev.dataTransfer.effectAllowed = "move";
  });
  gallery.addEventListener("dragover", (ev) => { if (ev.target.closest("[data-class]")) ev.preventDefault(); });
  gallery.addEventListener("drop", (ev) => {
    const target = ev.target.closest("[data-class]");
    if (!target) return;
    ev.preventDefault();
    const c = order()[Number(ev.dataTransfer.getData("text/plain"))];
    if (c && target.dataset.class !== c.class) change(c, target.dataset.class);
  });

  const sign = document.getElementById("sign");
  if (sign) sign.addEventListener("click", async () => {
    await queue;
    if (!window.confirm(`Sign this differential (${state.preview.wbc_total} WBC, ${state.preview.changed} cell(s) changed)?`)) return;
    const { status, data } = await post(W.base + "sign", { draft_version: state.draft_version });
    const out = document.getElementById("signed");
    if (status === 200) { out.textContent = `Signed: ${data.files.join(", ")}`; sign.disabled = true; show(""); }
    else out.textContent = `Not signed: ${(data.problems || [data.error]).join("; ")}`;
  });

  W.idle = () => queue; // for tests and tools: resolves when every save has been answered
  render();
})();
