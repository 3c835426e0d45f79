/*
 * Atelier chat: follows answers that are generating in a worker, the Stop button, Enter to send,
 * and the token inspector. Model text is only ever inserted with textContent.
 *
 *  - article[data-live]     an unfinished answer: follow it (Atelier.followAnswer, atelier.js)
 *  - [data-stop-button]     asks the worker to stop (the partial answer is kept)
 *  - [data-inspect]         toggles the token inspector (tokens coloured by probability)
 *  - [data-composer-input]  Enter sends, Shift+Enter adds a line
 */
(function () {
  "use strict";

  function csrfToken() {
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  // The context gauge: how this answer's prompt filled the window (sent before the first token).
  function drawGauge(report) {
    var gauge = document.querySelector("[data-gauge]");
    if (!gauge || !report.window) return;
    var offset = 0;
    ["system", "knowledge", "history", "reserved"].forEach(function (kind) {
      var tokens = report[kind] || 0;
      var percent = 100 * tokens / report.window;
      var rect = gauge.querySelector("rect[data-kind=" + kind + "]");
      if (rect) { rect.setAttribute("x", offset); rect.setAttribute("width", percent); }
      var label = gauge.querySelector("[data-gauge-tokens=" + kind + "]");
      if (label) label.textContent = tokens;
      offset += percent;
    });
    gauge.querySelector("[data-gauge-window]").textContent = report.window;
    gauge.hidden = false;
  }

  // What the chat page adds when an answer finishes: why it was cut, its sources, its buttons.
  function finished(article, data) {
    var truncated = article.querySelector("[data-truncated]");
    if (truncated) truncated.hidden = data.finish_reason !== "length";
    var body = article.querySelector("[data-body]");
    if (data.sources && data.sources.length && !article.querySelector(".msg-sources")) {
      // knowledge: the answer's sources, built as text nodes (file names are untrusted)
      var list = document.createElement("ol");
      list.className = "msg-sources";
      list.setAttribute("aria-label", "Sources");
      data.sources.forEach(function (s) {
        var link = document.createElement("a");
        link.href = s.url;
        link.textContent = "[" + s.n + "] " + s.document + (s.page ? ", page " + s.page : "");
        var item = document.createElement("li");
        item.appendChild(link);
        list.appendChild(item);
      });
      body.insertAdjacentElement("afterend", list);
    }
    article.querySelectorAll("[data-stop-button]").forEach(function (b) { b.hidden = true; });
    article.querySelectorAll("[data-inspect], [data-when-finished]").forEach(function (el) { el.hidden = false; });
    document.querySelectorAll("[data-send]").forEach(function (b) { b.disabled = false; });
  }

  function follow(article) {
    window.Atelier.followAnswer(article, {
      context: drawGauge,
      done: function (data) { finished(article, data); }
    });
  }

  function stop(button) {
    var article = button.closest("article");
    button.disabled = true;
    fetch(article.getAttribute("data-stop"), {
      method: "POST",
      headers: { "X-CSRFToken": csrfToken(), "Accept": "application/json" },
      credentials: "same-origin"
    });
  }

  function probabilityClass(logprob) {
    var p = Math.exp(logprob);
    if (p >= 0.9) return "p-high";
    if (p >= 0.5) return "p-mid";
    if (p >= 0.2) return "p-low";
    return "p-rare";
  }

  function percent(logprob) {
    return (100 * Math.exp(logprob)).toFixed(1) + "%";
  }

  function renderInspector(panel, tokens) {
    panel.textContent = "";
    var legend = document.createElement("p");
    legend.className = "small muted";
    legend.textContent = "Each token coloured by its probability; hover or focus one for the alternatives.";
    panel.appendChild(legend);
    var line = document.createElement("div");
    line.className = "tokens";
    tokens.forEach(function (entry) {
      var token = document.createElement("span");
      token.className = "tok " + probabilityClass(entry[1]);
      token.tabIndex = 0;
      token.textContent = entry[0];
      var tip = document.createElement("span");
      tip.className = "tok-tip";
      tip.setAttribute("role", "tooltip");
      entry[2].forEach(function (alt) {
        var row = document.createElement("span");
        row.className = "tok-alt" + (alt[0] === entry[0] ? " is-chosen" : "");
        var text = document.createElement("code");
        text.textContent = JSON.stringify(alt[0]);
        var p = document.createElement("span");
        p.textContent = percent(alt[1]);
        row.appendChild(text);
        row.appendChild(p);
        tip.appendChild(row);
      });
      token.setAttribute("aria-label", entry[0] + " " + percent(entry[1]));
      token.appendChild(tip);
      line.appendChild(token);
    });
    panel.appendChild(line);
  }

  function inspect(button) {
    var article = button.closest("article");
    var panel = article.querySelector("[data-inspector]");
    var open = button.getAttribute("aria-expanded") === "true";
    if (open) {
      panel.hidden = true;
      button.setAttribute("aria-expanded", "false");
      return;
    }
    fetch(button.getAttribute("data-inspect"), { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (data) {
        renderInspector(panel, data.tokens);
        panel.hidden = false;
        button.setAttribute("aria-expanded", "true");
      });
  }

  function init() {
    document.querySelectorAll("article[data-live]").forEach(follow);
    document.addEventListener("click", function (event) {
      var target = event.target;
      if (!(target instanceof Element)) return;
      var stopButton = target.closest("[data-stop-button]");
      if (stopButton) { stop(stopButton); return; }
      var inspectButton = target.closest("[data-inspect]");
      if (inspectButton) inspect(inspectButton);
    });
    document.querySelectorAll("[data-composer-input]").forEach(function (input) {
      input.addEventListener("keydown", function (event) {
        if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
          event.preventDefault();
          var send = input.form.querySelector("[data-send]");
          if (send && !send.disabled && input.value.trim()) input.form.requestSubmit();
        }
      });
    });
    var thread = document.querySelector("[data-thread]");
    if (thread && thread.lastElementChild) thread.lastElementChild.scrollIntoView({ block: "end" });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
