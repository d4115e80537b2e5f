// Countersign's own page behaviour: ticking clocks, the pending count in the title, and
// telling the approver when the gateway cannot be reached. No inline code, no HTML from strings.
(function () {
  "use strict";

  var meta = document.querySelector('meta[name="server-time"]');
  // The server's clock decides expiry; correct for a laptop clock that is off.
  var skew = meta ? Date.parse(meta.content) - Date.now() : 0;
  if (!isFinite(skew)) skew = 0;

  function now() { return Date.now() + skew; }

  function span(ms) {
    var total = Math.max(0, Math.floor(ms / 1000));
    var d = Math.floor(total / 86400), h = Math.floor(total % 86400 / 3600);
    var m = Math.floor(total % 3600 / 60), s = total % 60;
    function two(n) { return n < 10 ? "0" + n : String(n); }
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + two(m) + "m";
    if (m) return m + "m " + two(s) + "s";
    return s + "s";
  }

  // The same words as gateway/web/present.py's ago().
  function ago(ms) {
    var seconds = Math.trunc(ms / 1000), future = seconds < 0, amount;
    seconds = Math.abs(seconds);
    if (seconds < 10) return "just now";
    if (seconds < 60) amount = seconds + " s";
    else if (seconds < 3600) amount = Math.floor(seconds / 60) + " min";
    else if (seconds < 86400) amount = Math.floor(seconds / 3600) + " h";
    else {
      var days = Math.floor(seconds / 86400);
      amount = days + (days === 1 ? " day" : " days");
    }
    return future ? "in " + amount : amount + " ago";
  }

  function tick() {
    var t = now();
    document.querySelectorAll("[data-ago]").forEach(function (el) {
      var at = Date.parse(el.getAttribute("data-ago"));
      if (isFinite(at)) el.textContent = ago(t - at);
    });
    document.querySelectorAll("[data-since]").forEach(function (el) {
      var at = Date.parse(el.getAttribute("data-since"));
      if (isFinite(at)) el.textContent = span(t - at);
    });
    document.querySelectorAll("[data-countdown]").forEach(function (el) {
      var at = Date.parse(el.getAttribute("data-countdown"));
      if (!isFinite(at)) return;
      var left = at - t;
      el.textContent = left > 0 ? "in " + span(left) : "now";
      el.classList.toggle("soon", left < 60000);
    });
  }

  function updateCount() {
    var cards = document.getElementById("cards");
    if (!cards) return;
    var n = cards.querySelectorAll('[data-status="pending"]').length;
    var big = document.getElementById("pending-count");
    if (big) {
      big.textContent = String(n);
      big.setAttribute("aria-label", n + " waiting");
      big.hidden = n === 0;
    }
    var heading = document.getElementById("pending-title");
    if (heading) heading.textContent = n ? "Waiting for a decision" : "Inbox";
    var decidedNote = document.getElementById("decided-note");
    if (decidedNote) decidedNote.hidden = !cards.querySelector('[data-status]:not([data-status="pending"])');
    var nav = document.getElementById("nav-count");
    if (nav) {
      nav.textContent = String(n);
      nav.hidden = n === 0;
    }
    var section = cards.closest("[data-title]");
    var base = section ? section.getAttribute("data-title") : document.title.replace(/^\(\d+\)\s*/, "");
    document.title = (n ? "(" + n + ") " : "") + base;
  }

  function flash(level, text, key) {
    var area = document.getElementById("flash");
    if (!area) return;
    var box = document.createElement("div");
    box.className = "notice notice-" + level;
    box.setAttribute("role", "alert");
    if (key) box.setAttribute("data-flash", key);
    box.textContent = text;
    area.replaceChildren(box);
  }

  function clearFlash(key) {
    var area = document.getElementById("flash");
    if (area && area.querySelector('[data-flash="' + key + '"]')) area.replaceChildren();
  }

  document.addEventListener("htmx:afterSettle", function () { updateCount(); tick(); });
  document.addEventListener("htmx:afterRequest", function (event) {
    // Any answer at all, even a refusal, means the gateway is reachable again.
    var xhr = event.detail && event.detail.xhr;
    if (xhr && xhr.status > 0) clearFlash("offline");
  });
  document.addEventListener("htmx:sendError", function () {
    flash("warn", "Cannot reach the gateway. This page keeps trying; what you see may be out of date.", "offline");
  });
  document.addEventListener("htmx:responseError", function (event) {
    var status = event.detail && event.detail.xhr ? event.detail.xhr.status : "?";
    flash("error", "The gateway answered with an error (HTTP " + status + "). Reload the page to see the current " +
      "state before deciding again.", "error");
  });

  function start() { tick(); updateCount(); window.setInterval(tick, 1000); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
