// The review queue, keyboard first: type the right digits and Enter (or Enter alone to accept what was
// read), Ctrl+U marks the number unreadable, Ctrl+S skips it for now. Values go in as text, never markup.
"use strict";

let queue = [];
let skipped = new Set();
const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
const $ = (id) => document.getElementById(id);

function show() {
  const item = queue.find((entry) => !skipped.has(entry.item));
  $("left").textContent = `${queue.length} waiting`;
  $("empty").hidden = Boolean(item);
  $("card").hidden = !item;
  if (!item) return;
  $("card").dataset.item = item.item;
  $("source").textContent = item.source;
  $("page").textContent = item.page;
  $("number").textContent = item.number;
  $("confidence").textContent = item.confidence.toFixed(3);
  $("digits").textContent = item.digits;
  $("crop").hidden = !item.crop;
  if (item.crop) $("crop").src = `api/review/crop?item=${encodeURIComponent(item.item)}`;
  $("per_digit").replaceChildren(...item.per_digit.map((entry, index) => {
    const row = document.createElement("tr");
    for (const text of [String(index + 1), entry.digit,
                        entry.top.slice(1).map(([digit, p]) => `${digit} (${p.toFixed(2)})`).join(" · ")]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    return row;
  }));
  $("correction").value = "";
  $("correction").focus();
}

async function load() {
  const response = await fetch("api/review", {credentials: "same-origin", cache: "no-store"});
  queue = response.ok ? await response.json() : [];
  show();
}

async function decide(action) {
  const item = $("card").dataset.item;
  const digits = $("correction").value.trim();
  const by = $("by").value.trim() || "anonymous";
  localStorage.setItem("digits-reviewer", by);
  const response = await fetch("api/review", {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf()},
    body: JSON.stringify({item, action: action === "enter" ? (digits ? "correct" : "accept") : action, digits, by}),
  });
  const answer = await response.json().catch(() => ({}));
  $("message").textContent = response.ok
    ? `${answer.source}: ${answer.action === "correct" ? `${answer.read} corrected to ${answer.digits}` : answer.action}`
    : `not saved: ${answer.error || response.status}`;
  await load();
}

document.addEventListener("DOMContentLoaded", () => {
  $("by").value = localStorage.getItem("digits-reviewer") || "";
  $("decision").addEventListener("submit", (event) => event.preventDefault());
  document.addEventListener("keydown", (event) => {
    if ($("card").hidden) return;
    if (event.key === "Enter" && !event.ctrlKey) { event.preventDefault(); decide("enter"); return; }
    if (!event.ctrlKey) return;
    if (event.key === "u") { event.preventDefault(); decide("unreadable"); }
    if (event.key === "s") {
      event.preventDefault();
      skipped.add($("card").dataset.item);
      show();
    }
  });
  load();
});
