// Impresario console: keeps the page's #live region current. The server renders every page
// (escaping all text); this script only re-reads the same page and swaps in its #live region,
// parsed with DOMParser (an inert document: nothing in it runs). It never builds markup from
// data (a streaming run's text is appended with textContent). A run's page refreshes on each
// of its server-sent events but text deltas; every page also re-reads
// itself every few seconds. While an input in the region has the focus, the swap waits.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live) return;
  let busy = false;
  let again = false;

  function typing() {
    const el = document.activeElement;
    return el && live.contains(el) && el.tagName === "INPUT" && el.value !== "";
  }

  async function refresh() {
    if (busy || typing()) { again = true; return; }
    busy = true;
    try {
      const response = await fetch(location.href, { credentials: "same-origin", cache: "no-store" });
      if (response.redirected) { location.assign(response.url); return; }
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("live");
      if (fresh && fresh.innerHTML !== live.innerHTML) {
        // Copy the list first: adopting a node takes it out of fresh.childNodes.
        const nodes = Array.from(fresh.childNodes);
        live.replaceChildren(...nodes.map((n) => document.adoptNode(n)));
      }
    } catch (e) {
      // The service may be restarting: the next tick tries again.
    } finally {
      busy = false;
      if (again) { again = false; setTimeout(refresh, 250); }
    }
  }

  const events = live.dataset.events;
  if (events && window.EventSource) {
    const source = new EventSource(events);
    const kinds = ["state", "planned", "revised", "step_finished", "recalled", "compacted", "message"];
    kinds.forEach((kind) => source.addEventListener(kind, refresh));
    // A streaming run's text: appended as text (never parsed as markup) until the next refresh
    // replaces it with the server's copy.
    source.addEventListener("delta", (event) => {
      const stream = document.getElementById("stream");
      if (stream) stream.textContent += JSON.parse(event.data).text;
    });
    // The stream ends after the run's last state; do not let the browser replay it.
    source.onerror = () => { source.close(); refresh(); };
  }
  setInterval(refresh, events ? 3000 : 1500);
})();
