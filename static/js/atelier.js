/*
 * Atelier — small progressive enhancements. No framework, no inline handlers
 * (the CSP forbids them). Loaded synchronously in <head> so the "js" class is
 * on <html> before first paint; everything else waits for DOMContentLoaded.
 *
 *  - [data-nav-toggle]    opens / closes the sidebar on narrow screens
 *  - [data-dismiss]       removes its closest .flash message
 *  - .flash.success/.info fade out on their own after a few seconds
 *
 * It also defines window.Atelier.followAnswer, the one way a page follows an answer that a worker is
 * generating (chat.js and arena.js call it; they load after this file), and window.Atelier.intervalChart,
 * the one drawing of ratings with their 95% intervals (arena.js and loop.js).
 */
(function () {
  "use strict";

  var root = document.documentElement;
  root.classList.remove("no-js");
  root.classList.add("js");

  var AUTO_DISMISS_MS = 6000;

  function dismiss(flash) {
    if (!flash || flash.classList.contains("is-leaving")) return;
    flash.classList.add("is-leaving");
    window.setTimeout(function () {
      var list = flash.parentNode;
      flash.remove();
      if (list && list.classList.contains("flashes") && !list.querySelector(".flash")) {
        list.remove();
      }
    }, 200);
  }

  function setNavOpen(sidebar, toggle, open) {
    sidebar.classList.toggle("is-open", open);
    toggle.setAttribute("aria-expanded", open ? "true" : "false");
  }

  var ANSWER_STATUS_LABELS = { done: "Done", stopped: "Stopped", error: "Failed" };
  var ANSWER_STATUS_PILLS = ["pill-ok", "pill-info", "pill-error", "pill-pending"];

  /*
   * Follow an unfinished answer, an article with data-live (its server-sent events URL) holding
   * [data-body] and optionally [data-status] and [data-error]. Model text is only inserted with
   * textContent; the one innerHTML is the server's sanitized rendering of the finished answer.
   * The server replays the stream from its start, so a reload (or EventSource's own reconnect
   * after a network error) catches up. handlers.context(report) gets the context report if the
   * stream sends one; handlers.done(data) runs after the finished answer is shown.
   */
  function followAnswer(article, handlers) {
    handlers = handlers || {};
    var body = article.querySelector("[data-body]");
    var status = article.querySelector("[data-status]");
    var error = article.querySelector("[data-error]");
    var source = new EventSource(article.getAttribute("data-live"));
    var started = false;

    source.addEventListener("reset", function () {
      body.textContent = "";
      started = true;
    });
    if (handlers.context) {
      source.addEventListener("context", function (event) { handlers.context(JSON.parse(event.data)); });
    }
    source.addEventListener("token", function (event) {
      var data = JSON.parse(event.data);
      if (!started) { body.textContent = ""; started = true; }
      body.appendChild(document.createTextNode(data.text));
      if (status) status.textContent = "Streaming";
      article.classList.add("is-streaming");
    });
    source.addEventListener("done", function (event) {
      var data = JSON.parse(event.data);
      source.close();
      body.innerHTML = data.html; // rendered and sanitized on the server (apps/core/rendering.py)
      body.classList.remove("msg-streaming");
      body.classList.add("prose");
      article.classList.remove("is-streaming");
      article.removeAttribute("data-live");
      if (status) {
        status.textContent = ANSWER_STATUS_LABELS[data.status] || data.status;
        status.classList.remove.apply(status.classList, ANSWER_STATUS_PILLS);
        status.classList.add(data.status === "error" ? "pill-error" : data.status === "done" ? "pill-ok" : "pill-info");
      }
      if (error && data.error) { error.textContent = data.error; error.hidden = false; }
      if (handlers.done) handlers.done(data);
    });
  }

  /*
   * Ratings with their 95% intervals, one horizontal row per label (Chart.js, which the page loads). Each of
   * chart.series is {interval, rating (legend names), intervals ([low, high] per label), ratings (per label),
   * fill, line, dot (colours)}: its intervals are bars and its ratings dots on them.
   */
  function intervalChart(canvas, chart) {
    var bars = chart.series.map(function (s) {
      return { label: s.interval, data: s.intervals, backgroundColor: s.fill, borderColor: s.line, borderWidth: 1 };
    });
    var dots = chart.series.map(function (s) {
      var points = s.ratings.map(function (r, i) { return { x: r, y: chart.labels[i] }; });
      return { type: "scatter", label: s.rating, data: points, backgroundColor: s.dot };
    });
    return new window.Chart(canvas, {
      type: "bar",
      data: { labels: chart.labels, datasets: bars.concat(dots) },
      options: {
        indexAxis: "y",
        maintainAspectRatio: false,
        animation: false,
        scales: { x: { beginAtZero: false, title: { display: true, text: chart.axisTitle } } }
      }
    });
  }

  window.Atelier = { followAnswer: followAnswer, intervalChart: intervalChart };

  function init() {
    document.addEventListener("click", function (event) {
      var target = event.target;
      if (!(target instanceof Element)) return;

      var closer = target.closest("[data-dismiss]");
      if (closer) {
        dismiss(closer.closest(".flash"));
        return;
      }

      var toggle = target.closest("[data-nav-toggle]");
      if (toggle) {
        var sidebar = document.getElementById(toggle.getAttribute("data-nav-toggle"));
        if (sidebar) setNavOpen(sidebar, toggle, !sidebar.classList.contains("is-open"));
      }
    });

    document.addEventListener("keydown", function (event) {
      if (event.key !== "Escape") return;
      document.querySelectorAll("[data-nav-toggle]").forEach(function (toggle) {
        var sidebar = document.getElementById(toggle.getAttribute("data-nav-toggle"));
        if (sidebar && sidebar.classList.contains("is-open")) {
          setNavOpen(sidebar, toggle, false);
          toggle.focus();
        }
      });
    });

    document.querySelectorAll(".flash.success, .flash.info").forEach(function (flash) {
      var timer = window.setTimeout(function () { dismiss(flash); }, AUTO_DISMISS_MS);
      // Keep the message while the pointer or focus is on it.
      flash.addEventListener("mouseenter", function () { window.clearTimeout(timer); });
      flash.addEventListener("focusin", function () { window.clearTimeout(timer); });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
