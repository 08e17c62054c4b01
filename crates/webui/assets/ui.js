// Cocoon's pages: refreshes <main> in place and posts the operator controls with the
// token typed into the page (never stored). Served from the page's own origin, so a strict
// Content-Security-Policy (script-src 'self') holds.
(function () {
  "use strict";
  function refresh() {
    if (document.hidden) return Promise.resolve();
    return fetch(location.href, { cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("main");
        var old = document.getElementById("main");
        if (fresh && old) old.replaceWith(document.adoptNode(fresh));
        document.body.classList.remove("stale");
      })
      .catch(function () { document.body.classList.add("stale"); });
  }
  var main = document.getElementById("main");
  var every = main ? Number(main.getAttribute("data-refresh") || 0) : 0;
  if (every > 0) setInterval(refresh, every * 1000);

  function say(text, tone) {
    var out = document.getElementById("ctl-out");
    if (!out) return;
    out.textContent = text;
    out.setAttribute("data-tone", tone);
  }
  document.addEventListener("click", function (ev) {
    var b = ev.target.closest ? ev.target.closest("button[data-post]") : null;
    if (!b) return;
    ev.preventDefault();
    var field = document.getElementById("token");
    var token = field ? field.value.trim() : "";
    if (!token) { say("Enter the admin token first.", "bad"); return; }
    var path = b.getAttribute("data-post");
    var param = b.getAttribute("data-param");
    if (param) {
      var input = document.getElementById(b.getAttribute("data-input"));
      var v = input ? input.value.trim() : "";
      if (!v) { say("Enter a value for " + param + " first.", "bad"); return; }
      path += (path.indexOf("?") < 0 ? "?" : "&") + encodeURIComponent(param) + "=" + encodeURIComponent(v);
    }
    b.disabled = true;
    // A POST without a body: the browser guard lets it through from this origin only.
    fetch(path, { method: "POST", headers: { "Authorization": "Bearer " + token }, cache: "no-store" })
      .then(function (r) {
        return r.text().then(function (t) {
          say(r.status + " " + t.trim(), r.ok ? "good" : "bad");
          return refresh();
        });
      })
      .catch(function (e) { say(String(e), "bad"); })
      .then(function () { b.disabled = false; });
  });
})();
