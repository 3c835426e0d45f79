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
    window.Atelier.intervalChart(canvas, {
      labels: data.labels,
      axisTitle: "Rating",
      series: [{
        interval: "95% interval", rating: "Rating", intervals: data.intervals, ratings: data.ratings,
        fill: "rgba(99, 102, 241, 0.35)", line: "rgb(99, 102, 241)", dot: "rgb(30, 30, 60)"
      }]
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
