/*
 * The labeling panel, without inline handlers (the CSP forbids them).
 *
 *  - [data-ranker]: a list of candidates to put in order, best first. Drag a candidate (HTML5 drag and
 *    drop), or use its Up/Down buttons, or the keyboard: Alt+ArrowUp/ArrowDown moves the focused candidate,
 *    ArrowUp/ArrowDown moves the focus, Ctrl+Enter (or Cmd+Enter) submits. The hidden `order` inputs travel
 *    with their items, so the form posts the order as shown. Submitting the untouched presented order shows
 *    a warning first and needs a second submit (the server checks the same).
 *  - #quality-data: the admin page's charts (Chart.js), from a JSON data element.
 */
(function () {
  "use strict";

  function items(list) {
    return Array.prototype.slice.call(list.querySelectorAll(".rank-item"));
  }

  function renumber(list, status, moved) {
    items(list).forEach(function (item, i) {
      item.querySelector("[data-place]").textContent = String(i + 1);
    });
    if (moved && status) {
      status.textContent = moved.dataset.label + " is now number " + (items(list).indexOf(moved) + 1) + ".";
    }
  }

  function currentOrder(list) {
    return items(list).map(function (item) { return item.dataset.candidate; }).join(",");
  }

  function move(list, item, delta, status) {
    var all = items(list);
    var index = all.indexOf(item);
    var target = index + delta;
    if (target < 0 || target >= all.length) return;
    if (delta < 0) list.insertBefore(item, all[target]);
    else list.insertBefore(item, all[target].nextSibling);
    item.classList.add("is-moved");
    renumber(list, status, item);
  }

  function initRanker(form) {
    var list = form.querySelector("[data-ranker-list]");
    var status = form.querySelector("[data-ranker-status]");
    var warning = form.querySelector("[data-untouched-warning]");
    var presented = form.dataset.presented;
    var confirmed = !!form.querySelector("input[name=confirm_presented]");
    var dragged = null;

    list.addEventListener("click", function (event) {
      var button = event.target.closest("[data-move]");
      if (!button) return;
      var item = button.closest(".rank-item");
      move(list, item, button.dataset.move === "up" ? -1 : 1, status);
      button.focus();
    });

    list.addEventListener("keydown", function (event) {
      var item = event.target.closest(".rank-item");
      if (!item || event.target !== item) return;
      if (event.key !== "ArrowUp" && event.key !== "ArrowDown") return;
      event.preventDefault();
      var delta = event.key === "ArrowUp" ? -1 : 1;
      if (event.altKey) {
        move(list, item, delta, status);
        item.focus();
      } else {
        var all = items(list);
        var next = all[all.indexOf(item) + delta];
        if (next) next.focus();
      }
    });

    form.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        form.querySelector("[data-submit]").click();
      }
    });

    list.addEventListener("dragstart", function (event) {
      dragged = event.target.closest(".rank-item");
      if (!dragged) return;
      dragged.classList.add("is-dragging");
      event.dataTransfer.effectAllowed = "move";
      event.dataTransfer.setData("text/plain", dragged.dataset.candidate);
    });
    list.addEventListener("dragover", function (event) {
      if (!dragged) return;
      event.preventDefault();
      var over = event.target.closest(".rank-item");
      if (!over || over === dragged) return;
      var box = over.getBoundingClientRect();
      var after = event.clientY > box.top + box.height / 2;
      list.insertBefore(dragged, after ? over.nextSibling : over);
    });
    list.addEventListener("drop", function (event) {
      if (dragged) event.preventDefault();
    });
    list.addEventListener("dragend", function () {
      if (!dragged) return;
      dragged.classList.remove("is-dragging");
      dragged.classList.add("is-moved");
      renumber(list, status, dragged);
      dragged = null;
    });

    form.addEventListener("submit", function (event) {
      var submitter = event.submitter;
      if (submitter && submitter.value === "not_rankable") {
        var reason = form.querySelector("textarea[name=reason]");
        if (!reason.value.trim()) {
          event.preventDefault();
          reason.focus();
        }
        return;
      }
      if (currentOrder(list) === presented && !confirmed) {
        event.preventDefault();
        confirmed = true;
        warning.hidden = false;
        var confirm = document.createElement("input");
        confirm.type = "hidden";
        confirm.name = "confirm_presented";
        confirm.value = "1";
        form.appendChild(confirm);
      }
    });
  }

  function initCharts(element) {
    if (!window.Chart) return;
    var data = JSON.parse(element.textContent);
    function bar(id, labels, values, max, min) {
      var canvas = document.getElementById(id);
      if (!canvas || !labels.length) return;
      new window.Chart(canvas, {
        type: "bar",
        data: { labels: labels, datasets: [{ data: values, backgroundColor: "#4f46e5" }] },
        options: {
          animation: false,
          plugins: { legend: { display: false } },
          scales: { y: { min: min, max: max } },
        },
      });
    }
    bar("chart-tau", data.labelers, data.tau, 1, -1);
    bar("chart-gold", data.labelers, data.gold, 1, 0);
    bar("chart-kappa", data.kappa_labels, data.kappas, 1, -1);
  }

  function init() {
    document.querySelectorAll("[data-ranker]").forEach(initRanker);
    var quality = document.getElementById("quality-data");
    if (quality) initCharts(quality);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
