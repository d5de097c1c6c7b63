// executus viewer: live updates over server-sent events; no framework, no build step.
(function () {
  "use strict";
  var body = document.body;
  var base = body.dataset.base || "";
  var liveState = document.getElementById("live-state");

  function ago(iso) {
    var s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (s < 60) return Math.floor(s) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }
  function tick() {
    document.querySelectorAll("[data-since]").forEach(function (el) {
      el.textContent = "for " + ago(el.dataset.since);
      el.title = "since " + new Date(el.dataset.since).toLocaleString();
    });
    document.querySelectorAll("[data-running-since]").forEach(function (el) {
      el.textContent = ago(el.dataset.runningSince);
    });
  }
  function localTimes(root) {
    root.querySelectorAll("[data-local]").forEach(function (el) {
      var d = new Date(el.dataset.local);
      if (!isNaN(d)) { el.textContent = d.toLocaleString(); el.title = el.dataset.local; }
    });
  }
  function showLive(on, text) {
    if (!liveState) return;
    liveState.hidden = false;
    liveState.className = "live-state " + (on ? "on" : "off");
    liveState.textContent = text;
  }
  function follow(url, handlers) {
    if (!window.EventSource) return null;
    var source = new EventSource(url);
    source.onopen = function () { showLive(true, "live"); };
    source.onerror = function () { showLive(false, "reconnecting…"); };
    Object.keys(handlers).forEach(function (name) {
      source.addEventListener(name, function (e) { handlers[name](JSON.parse(e.data), source); });
    });
    return source;
  }

  // -- the runs list ---------------------------------------------------------------------
  var seenFirst = false;
  function applyRows(msg) {
    var tbody = document.getElementById("runs");
    if (!tbody) return;
    // The first message repeats the rows the page was served with: only what differs flashes.
    var flash = seenFirst;
    seenFirst = true;
    msg.rows.forEach(function (r) {
      var tpl = document.createElement("template");
      tpl.innerHTML = r.html.trim();
      var row = tpl.content.firstElementChild;
      var old = document.getElementById("run-" + r.run_id);
      if (old) { old.replaceWith(row); } else { tbody.appendChild(row); }
      localTimes(row);
      if (flash || !old) row.classList.add("changed");
    });
    var keep = {};
    msg.order.forEach(function (id) {
      var row = document.getElementById("run-" + id);
      if (row) { tbody.appendChild(row); keep[id] = true; }
    });
    Array.prototype.slice.call(tbody.children).forEach(function (row) {
      if (!keep[row.dataset.run]) row.remove();
    });
    var empty = document.getElementById("empty");
    if (empty) empty.hidden = tbody.children.length > 0;
    tick();
  }

  // -- a trace ---------------------------------------------------------------------------
  function refreshTrace(runId) {
    return fetch(base + "/runs/" + encodeURIComponent(runId) + "/trace", { headers: { Accept: "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var holder = document.getElementById("trace");
        // keep which child runs the reader folded
        var closed = {};
        holder.querySelectorAll("details").forEach(function (d, i) { if (!d.open) closed[i] = true; });
        holder.innerHTML = html;
        holder.querySelectorAll("details").forEach(function (d, i) { if (closed[i]) d.open = false; });
        localTimes(holder);
        tick();
      });
  }

  function act(button) {
    var runId = button.dataset.run, action = button.dataset.action;
    if (!window.confirm(button.textContent + " " + runId + "?")) return;
    var message = document.getElementById("action-message");
    button.disabled = true;
    fetch(base + "/runs/" + encodeURIComponent(runId) + "/" + action, {
      method: "POST", headers: { "X-Executus-Viewer": "1", "Content-Type": "application/json" }, body: "{}"
    }).then(function (r) { return r.json(); }).then(function (answer) {
      message.textContent = answer.message;
      message.className = answer.ok ? "muted" : "problem";
    }).catch(function (e) {
      message.textContent = "the request failed: " + e; message.className = "problem";
    }).finally(function () { button.disabled = false; });
  }

  function answerApproval(form) {
    var decisions = {};
    form.querySelectorAll("fieldset[data-call]").forEach(function (set) {
      var chosen = set.querySelector("input[name=kind]:checked");
      if (!chosen) return;
      var decision = { kind: chosen.value };
      var reason = set.querySelector("input[name=reason]").value.trim();
      if (reason) decision.reason = reason;
      decisions[set.dataset.call] = decision;
    });
    var message = document.getElementById("action-message");
    fetch(base + "/runs/" + encodeURIComponent(form.dataset.run) + "/approval", {
      method: "POST",
      headers: { "X-Executus-Viewer": "1", "Content-Type": "application/json" },
      body: JSON.stringify({ decisions: decisions })
    }).then(function (r) { return r.json(); }).then(function (answer) {
      message.textContent = answer.message;
      message.className = answer.ok ? "muted" : "problem";
      if (answer.ok) form.remove();
    }).catch(function (e) { message.textContent = "the request failed: " + e; message.className = "problem"; });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form.approval").forEach(function (form) {
      form.addEventListener("submit", function (e) { e.preventDefault(); answerApproval(form); });
    });
    localTimes(document);
    tick();
    setInterval(tick, 1000);
    document.querySelectorAll("[data-autosubmit]").forEach(function (el) {
      el.addEventListener("change", function () { el.form.submit(); });
    });
    document.querySelectorAll("button.action").forEach(function (b) {
      b.addEventListener("click", function () { act(b); });
    });
    var url = body.dataset.liveUrl;
    if (!url) return;
    if (body.dataset.page === "list") {
      follow(url, { rows: applyRows });
    } else if (body.dataset.page === "trace") {
      var runId = body.dataset.run;
      // One refresh at a time; a change that arrives meanwhile asks for one more after it.
      var busy = false, again = false;
      var refresh = function () {
        if (busy) { again = true; return; }
        busy = true;
        refreshTrace(runId).finally(function () { busy = false; if (again) { again = false; refresh(); } });
      };
      follow(url, {
        changed: refresh,
        end: function (msg, source) {
          source.close();
          showLive(false, "ended " + (msg.status || ""));
          refreshTrace(runId).then(function () {
            document.querySelectorAll("button.action").forEach(function (b) { b.remove(); });
          });
        }
      });
    }
  });
})();
