// facesets review page: selection count, keyboard review of unassigned faces, face boxes on a photo, messages.
"use strict";

function say(text) {
  const box = document.getElementById("message");
  if (box) { box.textContent = text; box.classList.toggle("shown", Boolean(text)); }
}

document.addEventListener("htmx:responseError", (event) => say(event.detail.xhr.responseText));
document.addEventListener("htmx:afterRequest", (event) => {
  if (event.detail.successful && event.detail.target && event.detail.target.id === "message") {
    say(event.detail.xhr.responseText);
  }
});

// person page: how many faces are chosen
document.addEventListener("change", () => {
  const chosen = document.getElementById("chosen");
  if (chosen) { chosen.textContent = document.querySelectorAll("#faces input[name=face]:checked").length + " chosen"; }
});

// unassigned queue: a, r, s, n, p on the current card; the next card takes the place of one that was decided
function cards() { return Array.from(document.querySelectorAll("ul.queue li.card")); }
function current() {
  const all = cards();
  return all.find((card) => card === document.activeElement || card.contains(document.activeElement)) || all[0];
}
function step(card, by) {
  const all = cards();
  const next = all[Math.max(0, Math.min(all.length - 1, all.indexOf(card) + by))];
  if (next) { next.focus(); }
}
let focusNext = null;  // the card that takes the place of one that was decided
document.addEventListener("htmx:beforeSwap", (event) => {
  const card = event.detail.target;
  if (card && card.classList && card.classList.contains("card")) {
    focusNext = card.nextElementSibling || card.previousElementSibling;
  }
});
// a decided card is removed (its events then reach no listener): the next one takes the focus
function watchQueue() {
  const list = document.querySelector("ul.queue");
  if (!list) { return; }
  new MutationObserver(() => {
    if (focusNext && focusNext.isConnected && !list.contains(document.activeElement)) { focusNext.focus(); }
    if (!focusNext || focusNext.isConnected) { focusNext = null; }
  }).observe(list, { childList: true });
}
document.addEventListener("keydown", (event) => {
  if (!document.querySelector("ul.queue") || event.target.tagName === "INPUT") { return; }
  const card = current();
  if (!card) { return; }
  const key = event.key.toLowerCase();
  if (key === "a" || key === "r") {
    const button = card.querySelector(key === "a" ? "button.accept" : "button.reject");
    if (button) { button.click(); }
  } else if (key === "s" || key === "n") {
    step(card, 1);
  } else if (key === "p") {
    step(card, -1);
  } else {
    return;
  }
  event.preventDefault();
});
document.addEventListener("click", (event) => {
  if (event.target.classList && event.target.classList.contains("skip")) { step(event.target.closest("li.card"), 1); }
});

// photo page: place each face box over the photo
function placeBoxes() {
  const photo = document.getElementById("photo");
  if (!photo || !photo.naturalWidth) { return; }
  for (const box of document.querySelectorAll("figure.photo a.box")) {
    const [x1, y1, x2, y2] = ["x1", "y1", "x2", "y2"].map((k) => parseFloat(box.dataset[k]));
    box.style.left = (100 * x1 / photo.naturalWidth) + "%";
    box.style.top = (100 * y1 / photo.naturalHeight) + "%";
    box.style.width = (100 * (x2 - x1) / photo.naturalWidth) + "%";
    box.style.height = (100 * (y2 - y1) / photo.naturalHeight) + "%";
  }
}
document.addEventListener("DOMContentLoaded", () => {
  const photo = document.getElementById("photo");
  if (photo) { if (photo.complete) { placeBoxes(); } else { photo.addEventListener("load", placeBoxes); } }
  const first = cards()[0];
  if (first) { first.focus({ preventScroll: true }); }
  watchQueue();
});
