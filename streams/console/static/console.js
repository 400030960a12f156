// Vigil ward console: live board rows (server-sent events) and keyboard navigation.
// Vendored, no dependencies; the pages work without it (reload to refresh).
"use strict";
(function () {
  const table = document.getElementById("board");
  if (!table) { return; }
  const body = document.getElementById("rows");
  const sort = table.dataset.sort, unit = table.dataset.unit, severity = table.dataset.severity;

  function keep(row) {
    if (unit && row.dataset.unit !== unit) { return false; }
    if (severity === "all") { return true; }
    if (severity === "alerting") { return Number(row.dataset.alerts) > 0; }
    if (severity === "review") { return row.dataset.status === "needs review"; }
    return row.dataset.severity === severity;
  }
  function key(row) {
    const id = row.dataset.patient, d = row.dataset;
    switch (sort) {
      case "risk": return [-Number(d.risk), id];
      case "news2": return [-Number(d.news2), id];
      case "since": return [d.since === "" ? 1e18 : Number(d.since), id];
      case "patient": return [id];
      case "unit": return [d.unit, id];
      default: return [-Number(d.rank), -Number(d.risk), id];
    }
  }
  function before(a, b) {
    const ka = key(a), kb = key(b);
    for (let i = 0; i < ka.length; i++) {
      if (ka[i] < kb[i]) { return true; }
      if (ka[i] > kb[i]) { return false; }
    }
    return false;
  }
  function place(row) {
    // Rows are few hundreds to thousands: a linear scan from the top is fast enough.
    for (const other of body.children) {
      if (other !== row && before(row, other)) { body.insertBefore(row, other); return; }
    }
    body.appendChild(row);
  }
  function update(data) {
    const template = document.createElement("template");
    template.innerHTML = data.html.trim();
    const row = template.content.firstElementChild;
    const old = document.getElementById(row.id);
    const focused = old && old.contains(document.activeElement);
    if (old) { old.remove(); }
    if (!keep(row)) { return; }
    place(row);
    row.dataset.seen = String(performance.now());
    if (focused) { row.querySelector("a").focus(); }
    const empty = document.getElementById("empty");
    if (empty) { empty.remove(); }
    document.getElementById("count").textContent = String(body.children.length);
  }
  if (window.EventSource) {
    const live = document.getElementById("live");
    const source = new EventSource("/events");
    source.addEventListener("open", () => { live.textContent = "Live"; });
    source.addEventListener("error", () => { live.textContent = "Reconnecting…"; });
    source.addEventListener("row", (event) => {
      const data = JSON.parse(event.data);
      update(data);
      if (data.clock !== null) {
        table.dataset.clock = String(data.clock);
        const at = new Date(data.clock * 1000).toISOString();
        document.getElementById("clock").textContent = at.slice(0, 10) + " " + at.slice(11, 16) + "Z";
      }
    });
  }
  // Keyboard: j / k move between patients, Enter opens (the link has the focus).
  document.addEventListener("keydown", (event) => {
    if (event.target.closest("input, select, textarea")) { return; }
    if (event.key !== "j" && event.key !== "k") { return; }
    const links = Array.from(body.querySelectorAll("th a"));
    if (!links.length) { return; }
    const at = links.indexOf(document.activeElement);
    const next = event.key === "j" ? Math.min(at + 1, links.length - 1) : Math.max(at - 1, 0);
    links[next].focus();
    event.preventDefault();
  });
  document.querySelectorAll("#filters select").forEach((select) => {
    select.addEventListener("change", () => document.getElementById("filters").submit());
  });
})();
