/* The learning loop's history chart: each version's rating beside its parent's, as 95% interval bars with the
 * rating marked. The data comes from a json_script block (the server's My arena snapshot); no inline script. */
(function () {
  "use strict";

  function draw(canvas) {
    var source = document.getElementById("loop-chart-data");
    if (!source || typeof window.Chart === "undefined") return;
    var data = JSON.parse(source.textContent);
    window.Atelier.intervalChart(canvas, {
      labels: data.labels,
      axisTitle: "Rating (My arena)",
      series: [
        {
          interval: "Version (95% interval)", rating: "Version rating", intervals: data.version, ratings: data.version_ratings,
          fill: "rgba(99, 102, 241, 0.45)", line: "rgb(99, 102, 241)", dot: "rgb(55, 48, 163)"
        },
        {
          interval: "Its parent (95% interval)", rating: "Parent rating", intervals: data.parent, ratings: data.parent_ratings,
          fill: "rgba(161, 161, 170, 0.45)", line: "rgb(113, 113, 122)", dot: "rgb(63, 63, 70)"
        }
      ]
    });
  }

  function init() {
    document.querySelectorAll("[data-loop-chart]").forEach(draw);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
