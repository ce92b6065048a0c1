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
  $("card").dataset.form = item.form ? "yes" : "";
  $("source").textContent = item.source;
  $("where").textContent = item.form ? `form ${item.form}` : `page ${item.page}, number ${item.number}`;
  $("confidence").textContent = item.confidence.toFixed(3);
  $("number_view").hidden = $("number_input").hidden = Boolean(item.form);
  $("form_view").hidden = !item.form;
  if (item.form) {
    showForm(item);
    return;
  }
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

function showForm(item) {
  // A form's fields together: each with its crop, its digits to check or correct, and its problems.
  $("fields").replaceChildren(...item.fields.map((field) => {
    const row = document.createElement("tr");
    const name = document.createElement("td");
    name.textContent = field.name;
    const picture = document.createElement("td");
    if (field.crop) {
      const img = document.createElement("img");
      img.src = `api/review/crop?item=${encodeURIComponent(item.item)}&field=${encodeURIComponent(field.name)}`;
      img.alt = `the field ${field.name} on the page`;
      picture.appendChild(img);
    }
    const value = document.createElement("td");
    const input = document.createElement("input");
    input.className = "field";
    input.dataset.name = field.name;
    input.value = field.digits;
    input.inputMode = "numeric";
    input.maxLength = 64;
    value.appendChild(input);
    const problems = document.createElement("td");
    problems.textContent = field.problems.join("; ");
    row.append(name, picture, value, problems);
    return row;
  }));
  const first = document.querySelector("input.field");
  if (first) { first.focus(); first.select(); }
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
  let body;
  if ($("card").dataset.form) {
    if (action === "unreadable") return;  // a form's fields are corrected one by one, not dropped together
    const fields = {};
    for (const input of document.querySelectorAll("input.field")) fields[input.dataset.name] = input.value.trim();
    body = {item, fields, by};
  } else {
    body = {item, action: action === "enter" ? (digits ? "correct" : "accept") : action, digits, by};
  }
  const response = await fetch("api/review", {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf()},
    body: JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  const rows = Array.isArray(answer) ? answer : [answer];
  $("message").textContent = response.ok
    ? rows.map((row) => `${row.source} ${row.number}: ${row.action === "correct" ? `${row.read} corrected to ${row.digits}` : row.action}`).join("; ")
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
