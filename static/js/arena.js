/*
 * Atelier arena: follows both answers of a battle as they stream from the worker, and draws the
 * leaderboard's interval chart from the server's data (a json_script block; no vote reaches the page).
 * Model text is only inserted with textContent; the one innerHTML is the server's sanitized rendering
 * of a finished answer.
 *
 *  - article[data-live]    an unfinished answer: follow its server-sent events
 *  - [data-interval-chart] the chart of ratings and their 95% intervals (Chart.js, vendored)
 */
(function () {
  "use strict";

  var STATUS_LABELS = { done: "Done", error: "Failed", streaming: "Streaming" };

  function allFinished() {
    return document.querySelectorAll("article.arena-answer[data-live]").length === 0;
  }

  function follow(article) {
    var body = article.querySelector("[data-body]");
    var status = article.querySelector("[data-status]");
    var error = article.querySelector("[data-error]");
    var source = new EventSource(article.getAttribute("data-live"));
    var started = false;

    source.addEventListener("reset", function () {
      body.textContent = "";
      started = true;
    });
    source.addEventListener("token", function (event) {
      var data = JSON.parse(event.data);
      if (!started) { body.textContent = ""; started = true; }
      body.appendChild(document.createTextNode(data.text));
      status.textContent = STATUS_LABELS.streaming;
      article.classList.add("is-streaming");
    });
    source.addEventListener("done", function (event) {
      var data = JSON.parse(event.data);
      source.close();
      body.innerHTML = data.html; // sanitized on the server (apps/core/rendering.py)
      body.classList.remove("msg-streaming");
      body.classList.add("prose");
      article.classList.remove("is-streaming");
      article.removeAttribute("data-live");
      status.textContent = STATUS_LABELS[data.status] || data.status;
      status.className = "pill " + (data.status === "done" ? "pill-ok" : "pill-error");
      if (data.error) { error.textContent = data.error; error.hidden = false; }
      if (allFinished()) {
        document.querySelectorAll("[data-next-turn]").forEach(function (b) { b.disabled = false; });
      }
    });
  }

  function drawChart(canvas) {
    var source = document.getElementById("arena-chart-data");
    if (!source || typeof window.Chart === "undefined") return;
    var data = JSON.parse(source.textContent);
    new window.Chart(canvas, {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: [
          { label: "95% interval", data: data.intervals, backgroundColor: "rgba(99, 102, 241, 0.35)", borderColor: "rgb(99, 102, 241)", borderWidth: 1 },
          { type: "scatter", label: "Rating", data: data.ratings.map(function (r, i) { return { x: r, y: data.labels[i] }; }), backgroundColor: "rgb(30, 30, 60)" }
        ]
      },
      options: {
        indexAxis: "y",
        maintainAspectRatio: false,
        animation: false,
        scales: { x: { beginAtZero: false, title: { display: true, text: "Rating" } } }
      }
    });
  }

  function init() {
    document.querySelectorAll("article.arena-answer[data-live]").forEach(follow);
    document.querySelectorAll("[data-interval-chart]").forEach(drawChart);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
