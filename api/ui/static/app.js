// Tierbox dashboard: the only script besides the pinned htmx (CSP: script-src 'self', no inline code).
(function () {
  "use strict";
  // Polled regions carry data-poll: while the tab is hidden their requests are cancelled, so a
  // forgotten tab costs the server nothing; when it is shown again they refresh at once.
  document.addEventListener("htmx:beforeRequest", function (evt) {
    var elt = evt.detail && evt.detail.elt;
    if (document.hidden && elt && elt.hasAttribute("data-poll")) {
      evt.preventDefault();
    }
  });
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && window.htmx) {
      window.htmx.trigger(document.body, "visible-again");
    }
  });
  // Forms with data-confirm ask before they submit (an irreversible action).
  document.addEventListener("submit", function (evt) {
    var form = evt.target;
    var question = form && form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      evt.preventDefault();
    }
  }, true);
})();
