// Refreshes the status page from /api/status every two seconds. Every value goes in as text, never as
// markup: file names come from whoever drops files into the inbox.
"use strict";

const REFRESH_MS = 2000;

function setText(id, value) {
  document.getElementById(id).textContent = value === undefined || value === null ? "–" : String(value);
}

function fillRows(id, rows, cells) {
  const body = document.getElementById(id);
  body.replaceChildren(...rows.map((row) => {
    const tr = document.createElement("tr");
    for (const value of cells(row)) {
      const td = document.createElement("td");
      td.textContent = value === undefined || value === null ? "" : String(value);
      tr.appendChild(td);
    }
    return tr;
  }));
}

function addThumbnails(recent) {
  // A thumbnail of each number in the row's last cell; where none can be made, its digits stay as text.
  const rows = document.getElementById("recent").children;
  recent.forEach((result, index) => {
    const cell = document.createElement("td");
    cell.className = "thumbs";
    for (const number of result.numbers || []) {
      const img = document.createElement("img");
      img.alt = number.digits;
      img.title = number.digits;
      img.addEventListener("error", () => img.replaceWith(document.createTextNode(number.digits + " ")));
      img.src = `api/thumbnail?source=${encodeURIComponent(result.source)}&page=${number.page}&number=${number.number}`;
      cell.appendChild(img);
    }
    rows[index].appendChild(cell);
  });
}

function drawChart(points) {
  const line = document.getElementById("line");
  if (points.length < 2) {
    line.setAttribute("points", "");
    setText("rate", "");
    return;
  }
  const first = points[0].at, last = points[points.length - 1].at;
  const top = Math.max(1, ...points.map((p) => p.files_per_second));
  line.setAttribute("points", points.map((p) =>
    `${(600 * (p.at - first) / Math.max(1, last - first)).toFixed(1)},${(118 - 116 * p.files_per_second / top).toFixed(1)}`
  ).join(" "));
  setText("rate", `now ${points[points.length - 1].files_per_second} files/s, peak ${top} files/s`);
}

async function refresh() {
  try {
    const response = await fetch("api/status", {credentials: "same-origin", cache: "no-store"});
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const report = await response.json();
    setText("state", report.error ? `Redis unreachable: ${report.error}` : "live");
    document.body.classList.toggle("down", Boolean(report.error));
    if (!report.error) {
      for (const id of ["files_waiting", "done", "failed", "flagged", "review_pending", "queue_depth"]) setText(id, report[id]);
      fillRows("workers", report.workers || [], (w) => [w.node, w.device, w.model, w.images, w.images_per_second]);
      drawChart(report.throughput || []);
    }
    fillRows("recent", report.recent || [], (r) =>
      [r.processed_at, r.source, r.status, r.digits, r.confidence, r.review === "true" ? "review" : ""]);
    addThumbnails(report.recent || []);
  } catch (error) {
    setText("state", `page offline: ${error.message}`);
    document.body.classList.add("down");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  refresh();
  setInterval(refresh, REFRESH_MS);
});
