// messages-broker console: reload pages that ask for it ([data-refresh] seconds), unless the
// operator is typing in a form.
(function () {
  var marker = document.querySelector("[data-refresh]");
  if (!marker) return;
  var seconds = Number(marker.getAttribute("data-refresh")) || 5;
  setInterval(function () {
    var active = document.activeElement;
    if (active && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName)) return;
    location.reload();
  }, seconds * 1000);
})();
