// cano ui: refreshes a live page while nobody is typing in it, and draws the graph.
(function () {
  "use strict";
  var every = Number(document.body.dataset.refresh || 0);
  if (every > 0) {
    setInterval(function () {
      var active = document.activeElement;
      var typing = active && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName);
      if (!typing) location.reload();
    }, every * 1000);
  }
  window.addEventListener("load", function () {
    if (window.mermaid && document.querySelector("pre.mermaid")) {
      window.mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: "neutral" });
      window.mermaid.run({ querySelector: "pre.mermaid" }).then(function () {
        document.body.dataset.graph = "drawn";
      }, function (err) {
        document.body.dataset.graph = "failed";
        console.error(err);
      });
    }
  });
})();
