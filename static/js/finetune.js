/* The fine-tune job page (no inline scripts: the CSP allows scripts from static files only).
 *
 *  [data-job-page]  the job: its URL is the JSON progress endpoint. The page asks for every metric point
 *                   from cursor 0 (so the curves are whole after a reload), then, once a second while the
 *                   job is queued or running, for the points and log lines after the last ones it has.
 *                   It draws the loss chart (train and validation) and, for DPO, the reward margin and
 *                   accuracy, and updates the status, step, epoch, losses, tokens/s, ETA, buttons and log.
 */
(function () {
  "use strict";

  var PILL = { succeeded: "pill-ok", failed: "pill-error", cancelled: "pill-info", running: "pill-pending pill-pulse" };
  var COLORS = { train: "#4f46e5", validation: "#f59e0b", margin: "#10b981", accuracy: "#ef4444" };

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    var s = Math.round(seconds);
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + " min " + (s % 60) + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }

  function fixed(value, digits) {
    return value === null || value === undefined ? "—" : Number(value).toFixed(digits);
  }

  function lineChart(id, datasets, axes) {
    var canvas = document.getElementById(id);
    if (!canvas || !window.Chart) return null;
    return new window.Chart(canvas, {
      type: "line",
      data: { datasets: datasets },
      options: {
        animation: false,
        parsing: false,
        normalized: true,
        scales: axes,
        plugins: { legend: { display: true } },
      },
    });
  }

  function series(label, color, axis) {
    return { label: label, data: [], borderColor: color, backgroundColor: color, pointRadius: 2, yAxisID: axis || "y" };
  }

  function init(page) {
    var url = page.getAttribute("data-job-page");
    var step = { type: "linear", title: { display: true, text: "step" } };
    var loss = lineChart("chart-loss", [series("train loss", COLORS.train), series("validation loss", COLORS.validation)], {
      x: step,
      y: { title: { display: true, text: "loss" } },
    });
    var rewards = lineChart(
      "chart-rewards",
      [series("reward margin", COLORS.margin), series("reward accuracy", COLORS.accuracy, "accuracy")],
      { x: step, y: { title: { display: true, text: "margin" } }, accuracy: { position: "right", min: 0, max: 1 } }
    );
    var log = page.querySelector("[data-field=log]");
    var lastLog = log.querySelector("li:last-child");
    var cursor = { after: 0, logAfter: lastLog ? Number(lastLog.getAttribute("data-log")) : 0 };
    page.chartPoints = 0;

    function addPoints(points) {
      points.forEach(function (p) {
        var xy = function (value) { return { x: p.step, y: value }; };
        if (loss) loss.data.datasets[p.kind === "train" ? 0 : 1].data.push(xy(p.loss));
        if (rewards && p.kind === "train" && p.reward_margin !== undefined) {
          rewards.data.datasets[0].data.push(xy(p.reward_margin));
          rewards.data.datasets[1].data.push(xy(p.reward_accuracy));
        }
      });
      if (!points.length) return;
      page.chartPoints += points.length;
      page.setAttribute("data-points", String(page.chartPoints));
      [loss, rewards].forEach(function (chart) {
        if (!chart) return;
        chart.data.datasets.forEach(function (d) { d.data.sort(function (a, b) { return a.x - b.x; }); });
        chart.update();
      });
    }

    function addLog(lines) {
      lines.forEach(function (line) {
        var item = document.createElement("li");
        item.setAttribute("data-log", String(line.id));
        var time = document.createElement("time");
        time.setAttribute("datetime", line.created_at);
        time.textContent = line.created_at.slice(11, 19);
        item.appendChild(time);
        item.appendChild(document.createTextNode(" " + line.message));
        log.appendChild(item);
      });
      if (lines.length) log.scrollTop = log.scrollHeight;
    }

    function show(job) {
      var field = function (name) { return page.querySelector("[data-field=" + name + "]"); };
      var status = field("status");
      status.textContent = job.status_label + (job.cancel_requested && !job.ended ? " (cancelling)" : "");
      status.className = "pill " + (PILL[job.status] || "pill-pending");
      page.setAttribute("data-status", job.status);
      field("message").textContent = job.message;
      field("message").hidden = !job.message;
      field("step").textContent = job.step + " / " + job.total_steps;
      field("epoch").textContent = fixed(job.epoch, 2);
      field("train_loss").textContent = fixed(job.train_loss, 4);
      field("validation_loss").textContent = fixed(job.validation_loss, 4);
      field("tokens_per_second").textContent = fixed(job.tokens_per_second, 0);
      field("eta").textContent = duration(job.eta_s);
      if (job.adapter) {
        var adapter = field("adapter");
        adapter.hidden = false;
        adapter.querySelector("code").textContent = job.adapter.engine_id;
        adapter.querySelector("[data-adapter-name]").textContent = job.adapter.name;
      }
      page.querySelectorAll("[data-when]").forEach(function (form) {
        form.hidden = !job[form.getAttribute("data-when")];
      });
    }

    function poll() {
      var query = "?after=" + cursor.after + "&log_after=" + cursor.logAfter;
      fetch(url + query, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (data) {
          if (!data) { window.setTimeout(poll, 5000); return; }
          cursor.after = data.after;
          cursor.logAfter = data.log_after;
          addPoints(data.points);
          addLog(data.log);
          show(data.job);
          if (!data.job.ended) window.setTimeout(poll, 1000);
        })
        .catch(function () { window.setTimeout(poll, 5000); });
    }

    poll();
  }

  function start() {
    document.querySelectorAll("[data-job-page]").forEach(init);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
