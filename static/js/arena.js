/*
 * Atelier arena: follows both answers of a battle as they stream from the worker, and draws the
 * leaderboard's interval chart from the server's data (a json_script block; no vote reaches the page).
 *
 *  - article[data-live]    an unfinished answer: follow it (Atelier.followAnswer, atelier.js)
 *  - [data-interval-chart] the chart of ratings and their 95% intervals (Chart.js, vendored)
 */
(function () {
  "use strict";

  function allFinished() {
    return document.querySelectorAll("article.arena-answer[data-live]").length === 0;
  }

  function follow(article) {
    window.Atelier.followAnswer(article, {
      done: function () {
        if (allFinished()) {
          document.querySelectorAll("[data-next-turn]").forEach(function (b) { b.disabled = false; });
        }
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
