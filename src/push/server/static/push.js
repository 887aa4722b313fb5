// Push: the little the pages do in the browser. Every page works without it.
// - times: <time class="when" datetime=ISO> shows "3 min ago" (the words of push/server/pagetimes.py),
//   recomputed every 15 s and after each htmx swap, the absolute UTC time on hover (title);
// - the search box: "/" focuses it, Esc clears it, the arrow keys walk its results.
(function () {
  "use strict";

  function relative(t, now) {
    var seconds = Math.round((now - t) / 1000);
    var ahead = seconds < 0, n = Math.abs(seconds), words;
    if (n < 5) return "just now";
    if (n < 60) words = n + " s";
    else if (n < 3600) words = Math.floor(n / 60) + " min";
    else if (n < 86400) words = Math.floor(n / 3600) + " h";
    else if (n < 30 * 86400) {
      var days = Math.floor(n / 86400);
      words = days + " day" + (days !== 1 ? "s" : "");
    } else return new Date(t).toISOString().slice(0, 10);
    return ahead ? "in " + words : words + " ago";
  }
  window.pushRelative = relative;

  function refreshTimes(root) {
    var now = Date.now();
    (root || document).querySelectorAll("time.when[datetime]").forEach(function (el) {
      var t = Date.parse(el.getAttribute("datetime"));
      if (!isNaN(t)) el.textContent = relative(t, now);
    });
  }

  function searchBox() { return document.getElementById("search-q"); }
  function results() { return Array.prototype.slice.call(document.querySelectorAll("#search-results a")); }
  function clearSearch() {
    var q = searchBox();
    if (!q) return;
    q.value = "";
    var box = document.getElementById("search-results");
    if (box) box.innerHTML = "";
    q.blur();
  }

  document.addEventListener("keydown", function (e) {
    var q = searchBox();
    if (!q) return;
    var typing = /^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName) || e.target.isContentEditable;
    if (e.key === "/" && !typing && !e.ctrlKey && !e.metaKey && !e.altKey) {
      e.preventDefault();
      q.focus();
      q.select();
    } else if (e.key === "Escape" && (e.target === q || e.target.closest("#search-results"))) {
      e.preventDefault();
      clearSearch();
    } else if ((e.key === "ArrowDown" || e.key === "ArrowUp") && (e.target === q || e.target.closest("#search-results"))) {
      var links = results();
      if (!links.length) return;
      e.preventDefault();
      var i = links.indexOf(e.target);
      var next = e.key === "ArrowDown" ? (i + 1) % links.length : (i <= 0 ? (i === 0 ? -1 : links.length - 1) : i - 1);
      if (next < 0) q.focus(); else links[next].focus();
    }
  });

  document.addEventListener("DOMContentLoaded", function () { refreshTimes(); });
  document.addEventListener("htmx:afterSettle", function () { refreshTimes(); });
  setInterval(refreshTimes, 15000);
})();
