// purser portal: progressive enhancement only. Every page works without it.
// - Forms disable their button once sent (no double purchase by double click;
//   the server deduplicates anyway, by the form's nonce).
// - Downgrade buttons ask for confirmation.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("form").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      var button = form.querySelector("button[type=submit]");
      var question = button && button.getAttribute("data-confirm");
      if (question && !window.confirm(question)) {
        event.preventDefault();
        return;
      }
      if (button) {
        window.setTimeout(function () { button.disabled = true; }, 0);
      }
    });
  });
});
