/* sparsemm analyze --html: the zoom window over the design bands and the mappings table
   (sort, filter, pages). Reads the JSON data island; writes text with textContent only. */
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("sparsemm-data").textContent);
  const $ = (id) => document.getElementById(id);
  const F = D.fields;
  const rows = D.rows;
  const N = rows.length;

  // --- the mappings table -------------------------------------------------------------------
  function endOf(i) {  // start + size, in hex (BigInt: addresses exceed 2**53)
    return (BigInt("0x" + rows[i][F.start]) + BigInt("0x" + D.dict.sizeHex[rows[i][F.size]])).toString(16);
  }
  function cell(i, c) {
    const r = rows[i];
    if (c.type === "index") return String(i + 1);
    if (c.type === "dict") return D.dict[c.dict][r[c.f]];
    if (c.type === "count") return r[c.f] ? String(r[c.f]) : "";
    return r[F.start] + "-" + endOf(i);  // addr
  }
  function sortKey(i, c) {
    if (c.type === "index" || c.type === "addr") return i;  // rows are in address order
    return rows[i][c.f];  // a dict index (dicts are sorted) or a count
  }
  const outFields = F.out;
  const changed = new Uint8Array(N);
  for (let i = 0; i < N; i++) {
    for (const f of outFields) if (D.dict.outcome[rows[i][f]] !== "vma") { changed[i] = 1; break; }
  }
  let texts = null;  // lower-case search text per row, made on the first search
  function text(i) {
    if (texts === null) {
      texts = new Array(N);
      for (let k = 0; k < N; k++) texts[k] = D.cols.map((c) => c.type === "index" ? "" : cell(k, c)).join(" ").toLowerCase();
    }
    return texts[i];
  }
  const state = { sortCol: 0, dir: 1, q: "", role: "", changedOnly: false, page: 0, size: D.page };
  let view = [];

  function refilter() {
    const q = state.q.trim().toLowerCase();
    const role = state.role === "" ? -1 : Number(state.role);
    const out = [];
    for (let i = 0; i < N; i++) {
      if (role >= 0 && rows[i][F.role] !== role) continue;
      if (state.changedOnly && !changed[i]) continue;
      if (q && text(i).indexOf(q) < 0) continue;
      out.push(i);
    }
    const c = D.cols[state.sortCol], dir = state.dir;
    if (!(c.type === "index" || c.type === "addr") || dir < 0) {
      out.sort((a, b) => (sortKey(a, c) - sortKey(b, c)) * dir || a - b);
    }
    view = out;
    state.page = 0;
    render();
  }
  function render() {
    const size = state.size;
    const pages = Math.max(1, Math.ceil(view.length / size));
    if (state.page >= pages) state.page = pages - 1;
    const from = state.page * size, to = Math.min(view.length, from + size);
    const frag = document.createDocumentFragment();
    for (let k = from; k < to; k++) {
      const i = view[k];
      const tr = document.createElement("tr");
      for (const c of D.cols) {
        const td = document.createElement("td");
        const v = cell(i, c);
        td.textContent = v;
        if (c.cls) td.className = c.cls;
        if (c.type === "dict" && c.dict === "outcome") td.className = "o-" + (D.outcomeClass[v] || "x");
        if (c.type === "dict" && c.dict === "role") td.className = "r-" + (D.roleClass[v] || "x");
        if (c.type === "count" && rows[i][c.f]) td.title = (D.markers[String(i)] || []).map((m) => m[0] + "-" + m[1]).join("\n");
        tr.appendChild(td);
      }
      frag.appendChild(tr);
    }
    $("map-rows").replaceChildren(frag);
    const of = view.length === N ? "" : " (filtered from " + N.toLocaleString("en") + ")";
    $("map-status").textContent = view.length
      ? "rows " + (from + 1).toLocaleString("en") + "\u2013" + to.toLocaleString("en") + " of " + view.length.toLocaleString("en") + of
      : "no rows match" + of;
    $("page-no").textContent = "page " + (state.page + 1) + " of " + pages;
    $("page-prev").disabled = $("page-first").disabled = state.page === 0;
    $("page-next").disabled = $("page-last").disabled = state.page >= pages - 1;
  }
  document.querySelectorAll("#map-table thead th").forEach((th, k) => {
    const b = th.querySelector("button");
    if (!b) return;
    b.addEventListener("click", () => {
      state.dir = state.sortCol === k ? -state.dir : 1;
      state.sortCol = k;
      document.querySelectorAll("#map-table thead th").forEach((o) => o.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", state.dir > 0 ? "ascending" : "descending");
      refilter();
    });
  });
  let timer = 0;
  $("map-q").addEventListener("input", (e) => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.q = e.target.value; refilter(); }, N > 20000 ? 200 : 60);
  });
  $("map-role").addEventListener("change", (e) => { state.role = e.target.value; refilter(); });
  $("map-changed").addEventListener("change", (e) => { state.changedOnly = e.target.checked; refilter(); });
  $("page-size").addEventListener("change", (e) => { state.size = Number(e.target.value); state.page = 0; render(); });
  $("page-first").addEventListener("click", () => { state.page = 0; render(); });
  $("page-prev").addEventListener("click", () => { state.page--; render(); });
  $("page-next").addEventListener("click", () => { state.page++; render(); });
  $("page-last").addEventListener("click", () => { state.page = 1e9; render(); });
  function showRow(i) {
    $("map-q").value = rows[i][F.start] + "-" + endOf(i);
    state.q = $("map-q").value;
    state.role = ""; $("map-role").value = "";
    state.changedOnly = false; $("map-changed").checked = false;
    refilter();
  }

  // --- the zoom window over the bands -------------------------------------------------------
  // The axis in the page's integer units: item k spans [X[k], X[k] + W[k]) and holds the VMAs
  // FIRST[k]..LAST[k] (a fold holds several). Rebuilt from the widths exactly as Python placed them.
  const nItems = D.axis.length;
  const X = new Float64Array(nItems), W = new Float64Array(nItems);
  const FIRST = new Int32Array(nItems), LAST = new Int32Array(nItems);
  const foldEnd = new Map(D.folds.map((f) => [f[0], f[1]]));
  let x = 0, vma = 0;
  for (let k = 0; k < nItems; k++) {
    const code = D.axis[k];
    if (code & 1 && k) x += D.gap;
    X[k] = x; W[k] = code >> 1; x += W[k];
    FIRST[k] = vma; LAST[k] = foldEnd.has(vma) ? foldEnd.get(vma) : vma; vma = LAST[k] + 1;
  }
  const total = D.total;
  document.documentElement.dataset.axisTotal = String(x);  // the tests compare it with D.total
  let win = D.zoom.slice();
  function itemAt(x) {  // the last item starting at or before x
    let lo = 0, hi = nItems - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (X[mid] <= x) lo = mid; else hi = mid - 1;
    }
    return lo;
  }
  function placeFrame() {
    const svgs = document.querySelectorAll("#overview svg");
    const frame = $("win");
    if (!svgs.length || !frame) return;
    const box = $("overview").getBoundingClientRect();
    const a = svgs[0].getBoundingClientRect(), b = svgs[svgs.length - 1].getBoundingClientRect();
    frame.style.left = (a.left - box.left + a.width * win[0] / total - 2) + "px";
    frame.style.width = Math.max(2, a.width * (win[1] - win[0]) / total) + "px";
    frame.style.top = (a.top - box.top - 2) + "px";
    frame.style.height = (b.bottom - a.top) + "px";
    frame.style.display = "block";
  }
  function setWin(x0, x1) {
    const w = Math.min(Math.max(x1 - x0, 1), total);
    x0 = Math.min(Math.max(0, x0), total - w);
    win = [x0, x0 + w];
    const vb = x0 + " 0 " + w + " 1";
    document.querySelectorAll("#zoom svg").forEach((s) => s.setAttribute("viewBox", vb));
    placeFrame();
    $("zoom-pos").value = String(x0);
    const a = itemAt(win[0]), b = itemAt(win[1] - 1e-6);
    const first = FIRST[a], last = LAST[b];
    $("zoom-range").textContent = "VMAs " + (first + 1).toLocaleString("en") + "\u2013" + (last + 1).toLocaleString("en") +
      " of " + N.toLocaleString("en") + ": " + rows[first][F.start] + "\u2013" + endOf(last);
  }
  function widthFor(n, from) {  // axis units of n items starting at item ``from``
    const a = Math.min(from, nItems - 1), b = Math.min(nItems - 1, a + n - 1);
    return X[b] + W[b] - X[a];
  }
  $("zoom-pos").addEventListener("input", (e) => {
    const x0 = Number(e.target.value);
    setWin(x0, x0 + widthFor(Number($("zoom-n").value), itemAt(x0)));
  });
  $("zoom-n").addEventListener("change", (e) => {
    const a = itemAt(win[0]);
    setWin(X[a], X[a] + widthFor(Number(e.target.value), a));
  });
  $("zoom-prev").addEventListener("click", () => setWin(win[0] - (win[1] - win[0]), win[0]));
  $("zoom-next").addEventListener("click", () => setWin(win[1], win[1] + (win[1] - win[0])));
  window.addEventListener("resize", placeFrame);
  document.querySelectorAll("#overview svg").forEach((s) => s.addEventListener("click", (e) => {
    const r = s.getBoundingClientRect();
    const x = (e.clientX - r.left) / r.width * total, w = win[1] - win[0];
    setWin(x - w / 2, x + w / 2);
  }));
  function describe(k) {
    const first = FIRST[k], last = LAST[k];
    if (first !== last) {
      return "folded: VMAs " + (first + 1) + "\u2013" + (last + 1) + " (" + (last - first + 1) + " VMAs, " +
        rows[first][F.start] + "\u2013" + endOf(last) + "): file mappings the same in every design";
    }
    const r = rows[first];
    const why = D.dict.why[r[F.why]];
    const outs = F.out.map((f, j) => D.outLabels[j] + ": " + D.dict.outcome[r[f]]).join(", ");
    return "#" + (first + 1) + "  " + r[F.start] + "\u2013" + endOf(first) + "  " + D.dict.size[r[F.size]] + "  " +
      D.dict.perms[r[F.perms]] + "  " + D.dict.kind[r[F.kind]] + "  \u2014  " + D.dict.role[r[F.role]] +
      (why ? " (" + why + ")" : "") + "  \u2014  " + outs + (D.dict.path[r[F.path]] ? "  \u2014  " + D.dict.path[r[F.path]] : "");
  }
  let hovered = -1;
  document.querySelectorAll("#zoom svg").forEach((s) => {
    s.addEventListener("mousemove", (e) => {
      const r = s.getBoundingClientRect();
      const x = win[0] + (e.clientX - r.left) / r.width * (win[1] - win[0]);
      const k = itemAt(x);
      if (k !== hovered) { hovered = k; $("zoom-info").textContent = describe(k); }
    });
    s.addEventListener("click", () => {
      if (hovered < 0) return;
      if (FIRST[hovered] === LAST[hovered]) { showRow(FIRST[hovered]); $("mappings").scrollIntoView(); }
    });
  });

  setWin(win[0], win[1]);
  refilter();
  document.documentElement.dataset.ready = "1";
})();
