/*
 * Atelier — small progressive enhancements. No framework, no inline handlers
 * (the CSP forbids them). Loaded synchronously in <head> so the "js" class is
 * on <html> before first paint; everything else waits for DOMContentLoaded.
 *
 *  - [data-nav-toggle]    opens / closes the sidebar on narrow screens
 *  - [data-dismiss]       removes its closest .flash message
 *  - .flash.success/.info fade out on their own after a few seconds
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
