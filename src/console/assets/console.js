// sipscreen console: the only script. Progressive enhancement: every
// page works without it. On the first page of Calls it reloads the live
// region (charts and the newest calls) every half second while the tab is
// visible, so a call shows up as soon as it has been logged.
(function () {
  "use strict";
  var live = document.querySelector("#calls-live[data-live]");
  if (!live || !window.fetch || !window.DOMParser) {
    return;
  }
  var busy = false;
  function refresh() {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (!r.ok) {
          throw new Error("HTTP " + r.status);
        }
        return r.text();
      })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.querySelector("#calls-live");
        if (fresh && fresh.innerHTML !== live.innerHTML) {
          // Keep open details open across the refresh.
          var open = {};
          live.querySelectorAll("tr[data-call] details[open]").forEach(function (d) {
            open[d.closest("tr").getAttribute("data-call")] = true;
          });
          live.innerHTML = fresh.innerHTML;
          live.querySelectorAll("tr[data-call]").forEach(function (tr) {
            if (open[tr.getAttribute("data-call")]) {
              var d = tr.querySelector("details");
              if (d) {
                d.open = true;
              }
            }
          });
        }
      })
      .catch(function () {})
      .then(function () {
        busy = false;
      });
  }
  window.setInterval(refresh, 500);
})();
