// munsit-bridge dashboard. Vendored, no build step; every page works without it.
// 1. A form's buttons are disabled once it is sent (no double POST).
// 2. Live updates: a page whose <body> has `data-live` (the event types to listen to) and
//    `data-live-after` (the stream's cursor when the page was made) listens to /ui/stream.
//    On each event it fetches its own URL again and swaps the #live element's content —
//    forms stay outside it, so what is typed is kept — unless the user is busy in a form
//    field: then it says "N new events" with a button to show them.
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.method.toLowerCase() === "post") {
    setTimeout(() => {
      for (const button of form.querySelectorAll("button")) button.disabled = true;
    }, 0);
  }
});

(() => {
  const body = document.body;
  const live = document.getElementById("live");
  if (!body.dataset.live || !live || typeof EventSource === "undefined") return;
  const note = document.getElementById("live-note");
  const count = document.getElementById("live-count");
  const show = document.getElementById("live-show");
  let unseen = 0; // events not yet shown
  let loading = false;
  let again = false;

  const busy = () => {
    const el = document.activeElement;
    return el instanceof HTMLElement && el.closest("form") !== null &&
      el.matches("input, select, textarea") && !live.contains(el);
  };

  // Where the focus is inside #live, so that the same element gets it back after a swap.
  const focusKey = () => {
    const el = document.activeElement;
    if (!(el instanceof HTMLElement) || !live.contains(el) || el === live) return null;
    if (el.id) return `#${CSS.escape(el.id)}`;
    const href = el.getAttribute("href");
    if (href) return `a[href="${CSS.escape(href)}"]`;
    const form = el.closest("form");
    if (form && form.getAttribute("action")) {
      return `form[action="${CSS.escape(form.getAttribute("action"))}"] button`;
    }
    return null;
  };

  const refresh = async () => {
    if (loading) { again = true; return; }
    loading = true;
    body.dataset.liveState = "loading";
    try {
      const response = await fetch(location.href, {
        credentials: "same-origin", headers: { Accept: "text/html" },
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("live");
      if (!fresh) throw new Error("no #live in the page");
      const key = focusKey();
      live.replaceChildren(...Array.from(fresh.childNodes, (n) => document.importNode(n, true)));
      if (key) {
        const target = live.querySelector(key);
        (target instanceof HTMLElement ? target : live).focus();
      }
      unseen = 0;
      note.hidden = true;
      body.dataset.liveState = "fresh";
    } catch (err) {
      body.dataset.liveState = "error";
      count.textContent = `${unseen} new events: reload the page to see them.`;
      note.hidden = false;
    } finally {
      loading = false;
      if (again) { again = false; refresh(); }
    }
  };

  const onEvent = () => {
    unseen += 1;
    if (busy()) {
      count.textContent = `${unseen} new event${unseen === 1 ? "" : "s"}.`;
      note.hidden = false;
      body.dataset.liveState = "waiting";
    } else {
      refresh();
    }
  };

  show.addEventListener("click", () => refresh());
  const source = new EventSource(`/ui/stream?after=${encodeURIComponent(body.dataset.liveAfter || "")}`);
  for (const type of body.dataset.live.split(" ")) source.addEventListener(type, onEvent);
  source.addEventListener("open", () => { body.dataset.liveState = "open"; });
  window.addEventListener("pagehide", () => source.close());
})();
