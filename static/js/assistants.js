/*
 * Atelier — the assistant builder. No inline handlers (CSP); model text is only ever set with
 * textContent, never innerHTML.
 *
 *  - [data-copy="<input id>"]  copies the input's value (the share link) to the clipboard
 *  - [data-preview]            the live preview chat beside the edit form: POSTs the form's current
 *                              values plus the preview conversation, reads the SSE answer
 *                              (`data: {"text"}` events, then `event: done` or `event: error`)
 */
(function () {
  "use strict";

  /* ------------------------------------------------------------- copy */

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "sr-only";
      document.body.appendChild(area);
      area.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      area.remove();
      if (ok) { resolve(); } else { reject(new Error("copy failed")); }
    });
  }

  function initCopy() {
    document.addEventListener("click", function (event) {
      var target = event.target;
      if (!(target instanceof Element)) return;
      var button = target.closest("[data-copy]");
      if (!button) return;
      var input = document.getElementById(button.getAttribute("data-copy"));
      if (!input) return;
      var label = button.textContent;
      copyText(input.value).then(function () {
        button.textContent = button.getAttribute("data-copied-label") || "Copied";
      }, function () {
        input.focus();
        input.select();
        button.textContent = "Press Ctrl+C";
      }).then(function () {
        window.setTimeout(function () { button.textContent = label; }, 1600);
      });
    });
  }

  /* ---------------------------------------------------------- preview */

  function initPreview(panel) {
    var form = document.getElementById(panel.getAttribute("data-preview-form"));
    var url = panel.getAttribute("data-preview-url");
    var csrf = panel.getAttribute("data-csrf-token");
    var log = panel.querySelector("[data-preview-log]");
    var empty = panel.querySelector("[data-preview-empty]");
    var starters = panel.querySelector("[data-preview-starters]");
    var input = panel.querySelector("[data-preview-input]");
    var message = panel.querySelector("[data-preview-message]");
    var send = panel.querySelector("[data-preview-send]");
    var stop = panel.querySelector("[data-preview-stop]");
    var status = panel.querySelector("[data-preview-status]");
    var reset = panel.querySelector("[data-preview-reset]");
    if (!form || !url || !log || !input || !message) return;

    var conversation = []; // {role, content}; lives only in this page
    var controller = null;

    function setBusy(busy) {
      send.disabled = busy;
      stop.hidden = !busy;
      status.textContent = busy ? "Answering…" : "";
    }

    function addTurn(role, text) {
      if (empty) empty.hidden = true;
      var bubble = document.createElement("div");
      bubble.className = "preview-turn preview-turn-" + role;
      bubble.textContent = text;
      log.appendChild(bubble);
      log.scrollTop = log.scrollHeight;
      return bubble;
    }

    function renderStarters() {
      if (!starters) return;
      starters.replaceChildren();
      if (conversation.length) return;
      form.querySelectorAll('input[name="starter_prompts"]').forEach(function (field) {
        var text = field.value.trim();
        if (!text) return;
        var chip = document.createElement("button");
        chip.type = "button";
        chip.className = "preview-starter";
        chip.textContent = text;
        chip.addEventListener("click", function () { ask(text); });
        starters.appendChild(chip);
      });
    }

    function parseEvent(block) {
      var event = "message";
      var data = "";
      block.split("\n").forEach(function (line) {
        if (line.indexOf("event:") === 0) event = line.slice(6).trim();
        else if (line.indexOf("data:") === 0) data += line.slice(5).trim();
      });
      var payload = {};
      try { payload = data ? JSON.parse(data) : {}; } catch (e) { payload = {}; }
      return { event: event, data: payload };
    }

    function showError(text) {
      addTurn("error", text);
    }

    async function readStream(response, bubble) {
      var reader = response.body.getReader();
      var decoder = new TextDecoder();
      var buffer = "";
      var answer = "";
      var finished = false;
      while (!finished) {
        var chunk = await reader.read();
        if (chunk.done) break;
        buffer += decoder.decode(chunk.value, { stream: true });
        var parts = buffer.split("\n\n");
        buffer = parts.pop();
        for (var i = 0; i < parts.length; i++) {
          var item = parseEvent(parts[i]);
          if (item.event === "error") {
            showError(item.data.message || "The preview failed.");
            finished = true;
            break;
          }
          if (item.event === "done") {
            finished = true;
            break;
          }
          if (typeof item.data.text === "string") {
            answer += item.data.text;
            bubble.textContent = answer;
            log.scrollTop = log.scrollHeight;
          }
        }
      }
      return answer;
    }

    async function ask(text) {
      if (controller || !text.trim()) return;
      conversation.push({ role: "user", content: text });
      var question = addTurn("user", text);
      renderStarters();
      message.value = "";

      var body = new FormData(form);
      body.delete("csrfmiddlewaretoken");
      body.append("conversation", JSON.stringify(conversation));
      controller = new AbortController();
      setBusy(true);
      var bubble = addTurn("assistant", "");
      bubble.classList.add("is-streaming");
      var answer = "";
      try {
        var response = await fetch(url, {
          method: "POST",
          body: body,
          headers: { "X-CSRFToken": csrf, "Accept": "text/event-stream" },
          credentials: "same-origin",
          signal: controller.signal,
        });
        var type = response.headers.get("Content-Type") || "";
        if (!response.ok || type.indexOf("text/event-stream") !== 0) {
          var problem = "The preview failed (HTTP " + response.status + ").";
          if (type.indexOf("application/json") === 0) {
            var json = await response.json();
            if (json && json.error) problem = json.error;
          }
          showError(problem);
        } else {
          answer = await readStream(response, bubble);
        }
      } catch (error) {
        if (error && error.name === "AbortError") {
          status.textContent = "Stopped.";
        } else {
          showError("The preview could not reach the server. Check your connection and try again.");
        }
      } finally {
        bubble.classList.remove("is-streaming");
        controller = null;
        setBusy(false);
      }
      answer = answer || bubble.textContent;
      if (answer) {
        conversation.push({ role: "assistant", content: answer });
      } else {
        // No answer: take the question back out (the error stays) and offer it again in the input.
        bubble.remove();
        question.remove();
        conversation.pop();
        if (!message.value) message.value = text;
      }
    }

    input.addEventListener("submit", function (event) {
      event.preventDefault();
      ask(message.value);
    });

    message.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        ask(message.value);
      }
    });

    stop.addEventListener("click", function () {
      if (controller) controller.abort();
    });

    reset.addEventListener("click", function () {
      if (controller) controller.abort();
      conversation = [];
      log.querySelectorAll(".preview-turn").forEach(function (turn) { turn.remove(); });
      if (empty) empty.hidden = false;
      status.textContent = "";
      renderStarters();
    });

    form.addEventListener("input", function (event) {
      if (event.target instanceof Element && event.target.getAttribute("name") === "starter_prompts") {
        renderStarters();
      }
    });

    renderStarters();
  }

  function init() {
    initCopy();
    document.querySelectorAll("[data-preview]").forEach(initPreview);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
