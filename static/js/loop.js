/* The learning loop's history chart: each version's rating beside its parent's, as 95% interval bars with the
 * rating marked. The data comes from a json_script block (the server's My arena snapshot); no inline script. */
(function () {
  "use strict";

  function draw(canvas) {
    var source = document.getElementById("loop-chart-data");
    if (!source || typeof window.Chart === "undefined") return;
    var data = JSON.parse(source.textContent);
    function points(ratings) {
      return ratings.map(function (r, i) { return { x: r, y: data.labels[i] }; });
    }
    new window.Chart(canvas, {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: [
          { label: "Version (95% interval)", data: data.version, backgroundColor: "rgba(99, 102, 241, 0.45)", borderColor: "rgb(99, 102, 241)", borderWidth: 1 },
          { label: "Its parent (95% interval)", data: data.parent, backgroundColor: "rgba(161, 161, 170, 0.45)", borderColor: "rgb(113, 113, 122)", borderWidth: 1 },
          { type: "scatter", label: "Version rating", data: points(data.version_ratings), backgroundColor: "rgb(55, 48, 163)" },
          { type: "scatter", label: "Parent rating", data: points(data.parent_ratings), backgroundColor: "rgb(63, 63, 70)" }
        ]
      },
      options: {
        indexAxis: "y",
        maintainAspectRatio: false,
        animation: false,
        scales: { x: { beginAtZero: false, title: { display: true, text: "Rating (My arena)" } } }
      }
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
