/* Knowledge pages (no inline scripts: the CSP allows scripts from static files only).
 *
 *  - [data-knowledge-progress]  a documents table: polls its JSON URL every second while any document is
 *                               queued or processing, and updates each row's status, progress, counts,
 *                               error, hidden-passage badge and buttons. Stops when nothing is active.
 *  - form[data-confirm]         asks before submitting (deletes).
 *  - [data-scroll-to-cited]     scrolls the cited passage (<mark id="cited">) into view.
 */
(function () {
  "use strict";

  var PILL = { ready: "pill-ok", failed: "pill-error", cancelled: "pill-info" };

  function updateRow(row, v) {
    var status = row.querySelector("[data-field=status]");
    status.textContent = v.status_label;
    status.className = "pill " + (PILL[v.status] || "pill-pending");
    var error = row.querySelector("[data-field=error]");
    error.textContent = v.error;
    error.hidden = !v.error;
    var progress = row.querySelector("[data-field=progress]");
    progress.max = Math.max(v.chunks_total, 1);
    progress.value = v.status === "ready" ? progress.max : v.chunks_embedded;
    progress.className = "progress" + (v.status === "ready" ? " progress-ok" : v.status === "failed" ? " progress-error" : "");
    row.querySelector("[data-field=counts]").textContent =
      v.pages_parsed + " page" + (v.pages_parsed === 1 ? "" : "s") + " · " +
      v.chunks_embedded + "/" + v.chunks_total + " chunks embedded";
    var hidden = row.querySelector("[data-field=hidden]");
    hidden.textContent = v.hidden_count + " hidden passage" + (v.hidden_count === 1 ? "" : "s") + " removed";
    hidden.hidden = !v.hidden_count;
    row.querySelectorAll("[data-when]").forEach(function (form) {
      var when = form.getAttribute("data-when");
      form.hidden = when === "active" ? !v.active : when === "retryable" ? !v.retryable : v.active;
    });
  }

  function poll(table) {
    var url = table.getAttribute("data-knowledge-progress");
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) {
        if (!data) { return; }
        var active = false;
        data.versions.forEach(function (v) {
          var row = table.querySelector('tr[data-document="' + v.document + '"]');
          if (!row) { return; }
          if (row.getAttribute("data-version") !== String(v.id)) { window.location.reload(); return; }
          updateRow(row, v);
          active = active || v.active;
        });
        if (active) { window.setTimeout(function () { poll(table); }, 1000); }
      })
      .catch(function () { window.setTimeout(function () { poll(table); }, 5000); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-knowledge-progress]").forEach(function (table) {
      if (table.querySelector("[data-when=active]:not([hidden])")) { poll(table); }
    });
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
      });
    });
    var cited = document.getElementById("cited");
    if (cited && cited.closest("[data-scroll-to-cited]")) { cited.scrollIntoView({ block: "center" }); }
  });
})();
