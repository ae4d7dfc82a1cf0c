/*
 * Beam dashboard: one small vanilla script, no build step, nothing fetched
 * from anywhere but this node.  It runs under a strict Content Security
 * Policy (script-src 'self': no inline scripts or handlers, no eval) and
 * never puts data into HTML: every value reaches the page through
 * textContent or a plain attribute, so a captured request cannot inject
 * markup into the page that shows it.
 *
 * Data: GET /api/v1/status and /api/v1/requests once at start, then the
 * Server-Sent Events of /api/events ("status" every second, "request" for
 * every new or changed exchange).  The token the server put in
 * <meta name="beam-token"> goes with every API call as X-Beam-Token (the
 * server wants it on anything that changes state); without it the page
 * shows how to log in and asks for nothing.
 */
(function () {
  "use strict";

  var HISTORY = 60;          // samples kept per sparkline (one per status event)
  var MAX_REQUESTS = 1000;   // summaries kept in the page
  var API = "/api/v1";

  var tokenMeta = document.querySelector('meta[name="beam-token"]');
  var token = tokenMeta ? tokenMeta.getAttribute("content") || "" : "";

  var state = {
    status: null,
    traffic: {},            // key -> {t, bytesIn, bytesOut, rates: [[in, out]...]}
    requests: new Map(),    // id -> summary
    selected: null,         // id of the request in the detail pane
    detail: null,           // its detail JSON
    route: "overview",
    lastEvent: 0,
    inspector: null
  };

  // -- small DOM helpers -----------------------------------------------------

  function $(id) { return document.getElementById(id); }

  /* el("td", {class: "x"}, "text", childNode...): text children become text nodes. */
  function el(tag, attrs) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }

  function setAttrs(node, attrs) {
    if (!attrs) return;
    Object.keys(attrs).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === "text") node.textContent = String(v);
      else node.setAttribute(k, v === true ? "" : String(v));
    });
  }

  function append(node, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { child.forEach(function (c) { append(node, c); }); return; }
    node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

  var SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    return node;
  }

  // -- formatting ------------------------------------------------------------

  function fmtBytes(n) {
    if (n === null || n === undefined) return "—";
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + " " + units[i];
  }

  function fmtRate(n) { return n > 0 ? fmtBytes(Math.round(n)) + "/s" : "idle"; }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "—";
    if (ms < 1) return "<1 ms";
    if (ms < 1000) return Math.round(ms) + " ms";
    return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
  }

  function fmtClock(epoch) {
    if (!epoch) return "—";
    var d = new Date(epoch * 1000);
    function two(x) { return (x < 10 ? "0" : "") + x; }
    return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
  }

  function fmtRelative(epoch) {
    if (!epoch) return "—";
    var s = Math.round(epoch - Date.now() / 1000);
    var a = Math.abs(s);
    var text = a < 60 ? a + " s" : a < 3600 ? Math.round(a / 60) + " min" : a < 86400 ?
      (a / 3600).toFixed(1) + " h" : (a / 86400).toFixed(1) + " d";
    return s >= 0 ? "in " + text : text + " ago";
  }

  function shortID(id) {
    if (!id) return "";
    return id.length > 16 ? id.slice(0, 8) + "…" + id.slice(-6) : id;
  }

  function statusClass(code) {
    if (code === null || code === undefined) return "s-pending";
    return "s" + String(code).charAt(0) + "xx";
  }

  // -- API -------------------------------------------------------------------

  function api(path, options) {
    options = options || {};
    var headers = {"X-Beam-Token": token, "Accept": "application/json"};
    var init = {method: options.method || "GET", headers: headers, credentials: "same-origin", cache: "no-store"};
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    return fetch(API + path, init).then(function (resp) {
      return resp.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = {error: text}; }
        if (resp.status === 401) { showLogin(); }
        if (!resp.ok) {
          var err = new Error((data && data.error) || ("HTTP " + resp.status));
          err.status = resp.status;
          throw err;
        }
        return data;
      });
    });
  }

  function showLogin() {
    $("login-hint").hidden = false;
    $("app").hidden = true;
    $("nav").hidden = true;
    setLive(false, "logged out");
    if (state.events) { state.events.close(); state.events = null; }
  }

  // -- live updates ----------------------------------------------------------

  function setLive(on, text) {
    var live = $("live");
    live.textContent = text || (on ? "live" : "offline");
    live.className = "live " + (on ? "on" : "off");
  }

  function connectEvents() {
    if (!window.EventSource) { pollStatus(); return; }
    var es = new EventSource("/api/events");
    state.events = es;
    es.addEventListener("open", function () { setLive(true); });
    es.addEventListener("status", function (ev) {
      var data;
      try { data = JSON.parse(ev.data); } catch (e) { return; }
      onStatus(data);
    });
    es.addEventListener("request", function (ev) {
      var data;
      try { data = JSON.parse(ev.data); } catch (e) { return; }
      onRequest(data);
    });
    es.addEventListener("error", function () {
      setLive(false, es.readyState === EventSource.CLOSED ? "offline" : "reconnecting…");
      if (es.readyState === EventSource.CLOSED) {
        // Refused (token gone, node restarted with another one, or too many
        // clients): ask once; a 401 shows the login hint, else try again.
        state.events = null;
        window.setTimeout(function () {
          api("/status").then(function (s) { onStatus(s); connectEvents(); }, function (e) {
            if (e.status !== 401) window.setTimeout(connectEvents, 5000);
          });
        }, 2000);
      }
    });
  }

  /* Without EventSource (very old browsers): poll the status every 2 s. */
  function pollStatus() {
    api("/status").then(onStatus, function () {}).then(function () { window.setTimeout(pollStatus, 2000); });
  }

  // -- status: overview, peers, DHT ------------------------------------------

  function onStatus(status) {
    if (!status || typeof status !== "object") return;
    state.status = status;
    state.lastEvent = Date.now();
    setLive(!!state.events, state.events ? "live" : "polling");
    sample(status);
    renderOverview(status);
    renderPeers(status);
    renderDHT(status);
    var insp = status.requests || status.inspector || null;
    if (insp && typeof insp === "object") { state.inspector = insp; renderInspectorState(); }
  }

  /* One throughput sample per tunnel/forward from the counters' deltas. */
  function sample(status) {
    var now = performance.now() / 1000;
    var seen = {};
    function take(key, stats) {
      stats = stats || {};
      var bin = stats.bytesIn || 0, bout = stats.bytesOut || 0;
      var t = state.traffic[key];
      seen[key] = true;
      if (!t) { state.traffic[key] = {t: now, bytesIn: bin, bytesOut: bout, rates: []}; return; }
      var dt = now - t.t;
      if (dt < 0.2) return;
      var rin = Math.max(0, bin - t.bytesIn) / dt, rout = Math.max(0, bout - t.bytesOut) / dt;
      t.rates.push([rin, rout]);
      if (t.rates.length > HISTORY) t.rates.shift();
      t.t = now; t.bytesIn = bin; t.bytesOut = bout;
    }
    (status.tunnels || []).forEach(function (x) { take("t:" + x.name, x.stats); });
    (status.forwards || []).forEach(function (x) { take("f:" + x.name, x.stats); });
    Object.keys(state.traffic).forEach(function (k) { if (!seen[k]) delete state.traffic[k]; });
  }

  function currentRate(key) {
    var t = state.traffic[key];
    if (!t || !t.rates.length) return 0;
    var last = t.rates[t.rates.length - 1];
    return last[0] + last[1];
  }

  /* Inline SVG sparkline of the in (filled) and out (line) rates. */
  function sparkline(key) {
    var w = 180, h = 30;
    var rates = (state.traffic[key] || {rates: []}).rates;
    var max = 1, busy = 0;
    rates.forEach(function (r) { max = Math.max(max, r[0], r[1]); if (r[0] + r[1] > 0) busy++; });
    var box = svg("svg", {"class": "spark", viewBox: "0 0 " + w + " " + h, width: w, height: h, role: "img",
                          "data-samples": rates.length, "data-busy": busy});
    function points(idx) {
      var pts = [];
      // The samples there are span the width (a minute once it is full).
      var n = Math.max(1, rates.length - 1);
      rates.forEach(function (r, i) {
        var x = (i / n) * w;
        var y = h - 1 - (r[idx] / max) * (h - 3);
        pts.push(x.toFixed(1) + "," + y.toFixed(1));
      });
      return pts;
    }
    var title = svg("title");
    var last = rates.length ? rates[rates.length - 1] : [0, 0];
    title.textContent = "in " + fmtRate(last[0]) + ", out " + fmtRate(last[1]) + " (peak " + fmtRate(max) + ")";
    box.appendChild(title);
    box.appendChild(svg("line", {x1: 0, y1: h - 0.5, x2: w, y2: h - 0.5, "class": "spark-base"}));
    if (rates.length > 1) {
      var pin = points(0);
      var first = pin[0].split(",")[0], lastX = pin[pin.length - 1].split(",")[0];
      box.appendChild(svg("polygon", {points: first + "," + h + " " + pin.join(" ") + " " + lastX + "," + h, "class": "spark-in"}));
      box.appendChild(svg("polyline", {points: points(1).join(" "), "class": "spark-out"}));
    }
    return box;
  }

  function renderOverview(s) {
    $("peer-id").textContent = s.peer_id || "";
    var reach = s.reachability || "unknown";
    var badge = $("reachability");
    badge.textContent = reach;
    badge.className = "badge reach-" + reach.replace(/[^a-z]/g, "");
    var conns = s.connections || [];
    var paths = {};
    conns.forEach(function (c) { var p = pathOf(c); paths[p] = (paths[p] || 0) + 1; });
    var parts = Object.keys(paths).sort().map(function (p) { return paths[p] + " " + p; });
    $("conn-count").textContent = conns.length + (parts.length ? " (" + parts.join(", ") + ")" : "");

    var addrs = clear($("addresses"));
    var list = (s.addrs || []).slice();
    (s.relay_addrs || []).forEach(function (a) { if (list.indexOf(a) < 0) list.push(a); });
    if (!list.length) addrs.appendChild(el("li", {"class": "muted"}, "no addresses yet"));
    list.forEach(function (a) { addrs.appendChild(el("li", null, el("code", {"class": "wrap"}, a))); });

    var tbody = clear($("tunnels"));
    var tunnels = s.tunnels || [];
    tunnels.forEach(function (t) {
      var st = t.stats || {};
      var key = "t:" + t.name;
      tbody.appendChild(el("tr", {"data-tunnel": t.name},
        el("td", null, el("strong", null, t.name), " ", t.private ? el("span", {"class": "badge"}, "private") : null,
          t.compress ? el("span", {"class": "badge"}, "lz4") : null),
        el("td", null, el("code", null, t.target), " ", el("span", {"class": "muted small"}, t.kind)),
        el("td", {"class": "num", title: (st.total || 0) + " in total, " + (st.refused || 0) + " refused, " + (st.failed || 0) + " failed"},
          String(st.active || 0), el("span", {"class": "muted small"}, " / " + (st.total || 0))),
        el("td", {"class": "num"}, fmtBytes(st.bytesIn || 0)),
        el("td", {"class": "num"}, fmtBytes(st.bytesOut || 0)),
        el("td", {"class": "num rate"}, fmtRate(currentRate(key))),
        el("td", null, sparkline(key)),
        el("td", {"class": "share"}, el("code", {"class": "wrap small", title: t.connect || ""}, t.share || ""))
      ));
    });
    $("tunnels-empty").hidden = tunnels.length > 0;

    var fbody = clear($("forwards"));
    var forwards = s.forwards || [];
    forwards.forEach(function (f) {
      var st = f.stats || {};
      var key = "f:" + f.name;
      var ok = /^connected/.test(f.state || "");
      fbody.appendChild(el("tr", {"data-forward": f.name},
        el("td", null, el("code", null, f.listen)),
        el("td", null, el("code", {title: f.peer_id || ""}, shortID(f.peer_id)), " / ", f.service || "default"),
        el("td", null, el("span", {"class": "badge " + (ok ? "ok" : "warn")}, f.state || "")),
        el("td", {"class": "num"}, String(st.active || 0), el("span", {"class": "muted small"}, " / " + (st.total || 0))),
        el("td", {"class": "num"}, fmtBytes(st.bytesIn || 0)),
        el("td", {"class": "num"}, fmtBytes(st.bytesOut || 0)),
        el("td", {"class": "num rate"}, fmtRate(currentRate(key))),
        el("td", null, sparkline(key))
      ));
    });
    $("forwards-empty").hidden = forwards.length > 0;
  }

  function pathOf(c) {
    if (c.transport === "tor") return "tor";
    return c.path || "direct";
  }

  function renderPeers(s) {
    var tbody = clear($("peers"));
    var conns = s.connections || [];
    conns.forEach(function (c) {
      var path = pathOf(c);
      var latency = c.latency_ms !== undefined ? c.latency_ms : c.rtt_ms;
      tbody.appendChild(el("tr", {"data-peer": c.peer_id},
        el("td", null, el("code", {title: c.peer_id}, shortID(c.peer_id))),
        el("td", null, el("span", {"class": "badge path-" + path}, path),
          c.relay ? el("span", {"class": "muted small", title: c.relay}, " via " + shortID(c.relay)) : null),
        el("td", null, c.direction || ""),
        el("td", null, [c.transport, c.security, c.muxer].filter(Boolean).join(" · ")),
        el("td", null, el("code", {"class": "wrap small"}, c.remote_addr || "")),
        el("td", {"class": "num"}, String(c.streams || 0)),
        el("td", {"class": "small"}, c.agent || "—"),
        el("td", {"class": "num"}, latency !== undefined && latency !== null ? fmtMs(latency) : "—")
      ));
    });
    $("peers-empty").hidden = conns.length > 0;
    $("peers-summary").textContent = conns.length + " connection" + (conns.length === 1 ? "" : "s");
  }

  function renderDHT(s) {
    var k = s.kademlia || {};
    $("dht-mode").textContent = k.dht_mode || (k.enabled === false ? "off" : "—");
    $("dht-table").textContent = k.routing_table_size !== undefined ? k.routing_table_size + " peers" : "—";
    $("dht-records").textContent = k.records_held !== undefined ? String(k.records_held) : "—";
    var lookups = k.lookups, failures = k.lookup_failures;
    if (lookups !== undefined) {
      $("dht-lookups").textContent = lookups + (failures ? " (" + failures + " failed)" : "");
      $("dht-ratio").textContent = lookups ? Math.round(100 * (lookups - (failures || 0)) / lookups) + " %" : "—";
      $("dht-latency").textContent = fmtMs(k.lookup_p50_ms) + " / " + fmtMs(k.lookup_p95_ms);
    } else {
      $("dht-lookups").textContent = "—";
      $("dht-ratio").textContent = "—";
      $("dht-latency").textContent = "—";
    }
    var tbody = clear($("names"));
    var names = s.names || [];
    names.forEach(function (n) {
      tbody.appendChild(el("tr", null,
        el("td", null, el("strong", null, n.name), n.error ? el("div", {"class": "error small"}, n.error) : null),
        el("td", null, (n.services || []).join(", ")),
        el("td", {"class": "num"}, String(n.seq !== undefined ? n.seq : "")),
        el("td", {title: n.published_at ? new Date(n.published_at * 1000).toString() : ""}, fmtRelative(n.published_at)),
        el("td", {title: n.next_republish ? new Date(n.next_republish * 1000).toString() : ""}, fmtRelative(n.next_republish)),
        el("td", {title: n.expires ? new Date(n.expires * 1000).toString() : ""}, fmtRelative(n.expires)),
        el("td", {"class": "num"}, String(n.stored_on !== undefined ? n.stored_on : "—"))
      ));
    });
    $("names-empty").hidden = names.length > 0;
  }

  function renderInspectorState() {
    var i = state.inspector;
    if (!i) return;
    $("inspector-off").hidden = i.enabled !== false;
    var summary = i.enabled === false ? "off (inspect = false)" :
      i.kept + " requests kept (" + fmtBytes(i.bytes) + " of " + fmtBytes(i.maxBytes || i.max_bytes) + "), " +
      i.captured + " captured" + (i.evicted ? ", " + i.evicted + " evicted" : "") +
      (i.gaveUp || i.gave_up ? ", " + (i.gaveUp || i.gave_up) + " gave up" : "");
    $("inspector-summary").textContent = summary;
  }

  // -- requests --------------------------------------------------------------

  function onRequest(summary) {
    if (!summary || typeof summary.id !== "number") return;
    state.requests.set(summary.id, summary);
    if (state.requests.size > MAX_REQUESTS) {
      var ids = Array.from(state.requests.keys()).sort(function (a, b) { return a - b; });
      ids.slice(0, ids.length - MAX_REQUESTS).forEach(function (id) { state.requests.delete(id); });
    }
    scheduleRequests();
    if (summary.id === state.selected) scheduleDetail();
  }

  var requestsPending = false;
  function scheduleRequests() {
    if (requestsPending) return;
    requestsPending = true;
    window.requestAnimationFrame(function () { requestsPending = false; renderRequests(); });
  }

  var detailTimer = null;
  function scheduleDetail() {
    if (detailTimer) return;
    detailTimer = window.setTimeout(function () { detailTimer = null; loadDetail(state.selected, false); }, 150);
  }

  function filters() {
    return {
      path: $("filter-path").value.trim(),
      status: $("filter-status").value.trim().toLowerCase(),
      method: $("filter-method").value.trim().toUpperCase()
    };
  }

  /* The same filters as the store's (beam requests --path/--status/--method). */
  function matches(r, f) {
    if (f.method && String(r.method || "").toUpperCase() !== f.method) return false;
    if (f.path && String(r.path || "").indexOf(f.path) < 0) return false;
    if (f.status) {
      if (f.status === "pending") { if (r.status !== null && r.status !== undefined) return false; }
      else if (/^[1-5]xx$/.test(f.status)) { if (r.status === null || String(r.status).charAt(0) !== f.status.charAt(0)) return false; }
      else if (String(r.status) !== f.status) return false;
    }
    return true;
  }

  function renderRequests() {
    var f = filters();
    var all = Array.from(state.requests.values()).sort(function (a, b) { return b.id - a.id; });
    var shown = all.filter(function (r) { return matches(r, f); });
    var tbody = clear($("requests"));
    shown.forEach(function (r) {
      var tr = el("tr", {"data-id": r.id, "class": "req" + (r.id === state.selected ? " selected" : "") + (r.state === "aborted" ? " aborted" : ""), tabindex: 0},
        el("td", {"class": "num muted"}, "#" + r.id),
        el("td", {"class": "muted small"}, fmtClock(r.started)),
        el("td", null, el("span", {"class": "method"}, r.method || "")),
        el("td", {"class": "path"}, el("span", {"class": "wrap"}, r.path || ""),
          r.upgrade ? el("span", {"class": "badge upgrade"}, r.upgrade === "websocket" ? "WebSocket" : r.upgrade) : null,
          r.replay_of ? el("span", {"class": "badge replay", title: "replay of #" + r.replay_of}, "↻ #" + r.replay_of) : null),
        el("td", null, statusBadge(r)),
        el("td", {"class": "num"}, fmtMs(r.duration_ms)),
        el("td", {"class": "num small"}, fmtBytes(r.response_size)),
        el("td", {"class": "small"}, r.tunnel || "")
      );
      tbody.appendChild(tr);
    });
    $("requests-empty").hidden = shown.length > 0;
    $("requests-empty").textContent = all.length ?
      "No request matches these filters (" + all.length + " captured)." :
      "No requests yet. HTTP/1.x requests that come through your tunnels appear here live.";
    $("nav-requests-count").textContent = all.length ? String(all.length) : "";
  }

  function statusBadge(r) {
    if (r.state === "aborted" && (r.status === null || r.status === undefined)) {
      return el("span", {"class": "status s-aborted", title: r.error || "aborted"}, "aborted");
    }
    if (r.status === null || r.status === undefined) return el("span", {"class": "status s-pending"}, "pending");
    return el("span", {"class": "status " + statusClass(r.status), title: r.reason || ""}, String(r.status) + (r.reason ? " " + r.reason : ""));
  }

  function selectRequest(id) {
    state.selected = id;
    renderRequests();
    loadDetail(id, true);
  }

  function loadDetail(id, fresh) {
    if (id === null || id === undefined) { renderEmptyDetail(); return; }
    if (fresh) {
      var pane = clear($("request-detail"));
      pane.appendChild(el("p", {"class": "muted"}, "Loading #" + id + "…"));
    }
    api("/requests/" + encodeURIComponent(id)).then(function (d) {
      if (state.selected !== id) return;
      // Keep an open editor: a live update must not wipe what the user types.
      if (!fresh && document.getElementById("replay-editor")) { state.detail = d; return; }
      state.detail = d;
      renderDetail(d);
    }, function (e) {
      if (state.selected !== id) return;
      var pane = clear($("request-detail"));
      pane.appendChild(el("p", {"class": "error"}, e.status === 404 ?
        "Request #" + id + " is no longer kept (the inspector's buffer keeps the newest ones)." : "Could not load #" + id + ": " + e.message));
    });
  }

  function renderEmptyDetail() {
    var pane = clear($("request-detail"));
    pane.appendChild(el("p", {"class": "empty"}, "Select a request to see its headers and bodies."));
  }

  function renderDetail(d) {
    var pane = $("request-detail");
    // A live update of the same exchange keeps the replay's result and the
    // curl text the user asked for.
    var keep = pane.getAttribute("data-id") === String(d.id) ?
      [$("replay-result"), $("curl-output")].filter(Boolean) : [];
    clear(pane);
    pane.setAttribute("data-id", d.id);
    pane.appendChild(el("div", {"class": "detail-head"},
      el("h2", null, el("span", {"class": "method"}, d.method || ""), " ", el("span", {"class": "wrap"}, d.path || "")),
      el("div", {"class": "detail-meta"},
        statusBadge(d), " ",
        el("span", {"class": "muted"}, "#" + d.id + " · " + fmtMs(d.duration_ms) + " · " + (d.http_version || "") +
          " · tunnel " + (d.tunnel || "") + " · " + fmtClock(d.started)),
        d.upgrade ? el("span", {"class": "badge upgrade"}, d.upgrade === "websocket" ? "WebSocket upgrade" : d.upgrade) : null,
        d.replay_of ? el("a", {"class": "badge replay", href: "#/requests/" + Number(d.replay_of)}, "replay of #" + d.replay_of) : null
      ),
      d.peer ? el("div", {"class": "muted small"}, "from peer ", el("code", {title: d.peer}, shortID(d.peer))) : null,
      d.error ? el("p", {"class": "error"}, d.error) : null
    ));
    pane.appendChild(el("div", {"class": "actions"},
      el("button", {id: "replay", type: "button", title: "Send this request again to the tunnel's local service"}, "Replay"),
      el("button", {id: "edit-replay", type: "button", "class": "ghost"}, "Edit and replay"),
      el("button", {id: "copy-curl", type: "button", "class": "ghost"}, "Copy as curl")
    ));
    var kept = {};
    keep.forEach(function (n) { kept[n.id] = n; });
    pane.appendChild(kept["replay-result"] || el("div", {id: "replay-result", "class": "notice", hidden: true}));
    pane.appendChild(kept["curl-output"] || el("pre", {id: "curl-output", "class": "code", hidden: true}));
    if (d.upgrade === "websocket") {
      pane.appendChild(el("p", {"class": "notice"}, "The connection switched to WebSocket here; its frames are not captured."));
    }
    pane.appendChild(messageSection("Request", d.request));
    pane.appendChild(messageSection("Response", d.response));
    $("replay").addEventListener("click", function () { replay(d.id, undefined); });
    $("edit-replay").addEventListener("click", function () { openEditor(d); });
    $("copy-curl").addEventListener("click", function () { copyCurl(d.id); });
  }

  function messageSection(title, m) {
    var section = el("section", {"class": "message", "data-message": title.toLowerCase()});
    section.appendChild(el("h3", null, title));
    if (!m) { section.appendChild(el("p", {"class": "muted"}, "No response yet.")); return section; }
    var headers = m.headers || [];
    var table = el("table", {"class": "headers"});
    headers.forEach(function (h) { table.appendChild(el("tr", null, el("th", null, h[0]), el("td", null, h[1]))); });
    section.appendChild(el("details", {open: true}, el("summary", null, "Headers (" + headers.length + ")"), table));
    section.appendChild(el("h4", null, "Body ", el("span", {"class": "muted small"}, bodyInfo(m))));
    section.appendChild(bodyView(m));
    return section;
  }

  function bodyInfo(m) {
    var parts = [];
    if (m.content_type) parts.push(m.content_type);
    parts.push(fmtBytes(m.size || 0));
    if (m.kind && m.kind !== "empty") parts.push(m.kind);
    if (m.truncated) parts.push("first " + fmtBytes(m.captured || 0) + " captured");
    if (m.complete === false) parts.push("incomplete");
    return parts.join(" · ");
  }

  function bodyView(m) {
    switch (m.kind) {
      case "empty":
      case undefined:
        return el("p", {"class": "muted body-empty"}, "No body.");
      case "binary":
        return el("p", {"class": "body-binary"}, "Binary body: " + fmtBytes(m.size || 0) +
          (m.content_type ? " of " + m.content_type : "") + " (not shown).");
      case "form":
        if (m.form && m.form.length) {
          var t = el("table", {"class": "headers body-form"});
          m.form.forEach(function (kv) { t.appendChild(el("tr", null, el("th", null, kv[0]), el("td", null, kv[1]))); });
          return t;
        }
        return el("pre", {"class": "code body-text"}, m.text || "");
      default:
        return el("pre", {"class": "code body-" + m.kind}, m.text === null || m.text === undefined ? "" : m.text);
    }
  }

  /* The captured body as text for the editor (UTF-8 of the raw bytes, not the pretty form). */
  function rawBodyText(m) {
    if (!m || !m.base64) return "";
    try {
      var bin = atob(m.base64);
      var bytes = new Uint8Array(bin.length);
      for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      return new TextDecoder("utf-8", {fatal: false}).decode(bytes);
    } catch (e) { return ""; }
  }

  function openEditor(d) {
    var old = $("replay-editor");
    if (old) { old.parentNode.removeChild(old); return; }
    var req = d.request || {headers: []};
    var binary = req.kind === "binary";
    var original = rawBodyText(req);
    var headersText = (req.headers || []).map(function (h) { return h[0] + ": " + h[1]; }).join("\n");
    var form = el("form", {id: "replay-editor", "class": "editor"},
      el("div", {"class": "row"},
        el("label", null, "Method", el("input", {id: "edit-method", value: d.method || "GET", size: 8, autocomplete: "off"})),
        el("label", {"class": "grow"}, "Path", el("input", {id: "edit-path", value: d.path || "/", autocomplete: "off"}))),
      el("label", null, "Headers (one per line, Name: value)",
        el("textarea", {id: "edit-headers", rows: Math.min(12, Math.max(3, (req.headers || []).length + 1)), spellcheck: "false"})),
      el("label", null, binary ? "Body (binary: sent as captured unless you type a new one)" : "Body",
        el("textarea", {id: "edit-body", rows: 6, spellcheck: "false"})),
      req.truncated ? el("p", {"class": "notice small"}, "The captured body was cut at the inspector's cap: type the full body to replay it.") : null,
      el("div", {"class": "actions"},
        el("button", {id: "replay-send", type: "submit"}, "Send"),
        el("button", {id: "replay-cancel", type: "button", "class": "ghost"}, "Cancel"))
    );
    $("edit-replay").parentNode.insertAdjacentElement("afterend", form);
    $("edit-headers").value = headersText;
    $("edit-body").value = binary ? "" : original;
    $("replay-cancel").addEventListener("click", function () { form.parentNode.removeChild(form); });
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var headers = [];
      $("edit-headers").value.split("\n").forEach(function (line) {
        var i = line.indexOf(":");
        if (line.trim() && i > 0) headers.push([line.slice(0, i).trim(), line.slice(i + 1).trim()]);
      });
      var body = {method: $("edit-method").value.trim() || "GET", path: $("edit-path").value || "/", headers: headers};
      var typed = $("edit-body").value;
      if (binary ? typed !== "" : (typed !== original || req.truncated)) body.body = typed;
      replay(d.id, body);
    });
  }

  function replay(id, body) {
    var result = $("replay-result");
    result.hidden = false;
    result.className = "notice";
    clear(result).appendChild(document.createTextNode("Replaying #" + id + "…"));
    api("/requests/" + encodeURIComponent(id) + "/replay", {method: "POST", body: body || {}}).then(function (d) {
      if (d && typeof d.id === "number") onRequest(d);
      var res = $("replay-result");
      if (!res) return;
      res.className = "notice ok";
      clear(res).appendChild(el("span", null, "Replayed as ",
        el("a", {href: "#/requests/" + Number(d.id), "class": "replay-link", "data-id": d.id}, "#" + d.id), ": ",
        statusBadge(d), " in " + fmtMs(d.duration_ms)));
    }, function (e) {
      var res = $("replay-result");
      if (!res) return;
      res.className = "notice error";
      clear(res).appendChild(document.createTextNode("Replay failed: " + e.message));
    });
  }

  function copyCurl(id) {
    var out = $("curl-output");
    api("/requests/" + encodeURIComponent(id) + "/curl").then(function (d) {
      out.hidden = false;
      out.textContent = d.curl || "";
      var done = function (ok) {
        var b = $("copy-curl");
        if (b) b.textContent = ok ? "Copied" : "Copy as curl (select below)";
      };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(d.curl || "").then(function () { done(true); }, function () { selectText(out); done(false); });
      } else { selectText(out); done(false); }
    }, function (e) {
      out.hidden = false;
      out.textContent = "Could not export: " + e.message;
    });
  }

  function selectText(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }

  function loadRequests() {
    return api("/requests?limit=500").then(function (data) {
      (data.requests || []).forEach(onRequest);
      if (data.status) { state.inspector = data.status; renderInspectorState(); }
    }, function () {});
  }

  // -- routing ---------------------------------------------------------------

  function route() {
    var hash = location.hash.replace(/^#\/?/, "");
    var parts = hash.split("/");
    var view = parts[0] || "overview";
    if (["overview", "peers", "dht", "requests"].indexOf(view) < 0) view = "overview";
    state.route = view;
    Array.prototype.forEach.call(document.querySelectorAll(".view"), function (v) {
      v.hidden = v.getAttribute("data-view") !== view;
    });
    Array.prototype.forEach.call(document.querySelectorAll("#nav a"), function (a) {
      a.className = a.getAttribute("data-route") === view ? "active" : "";
    });
    document.title = "Beam · " + view.charAt(0).toUpperCase() + view.slice(1);
    if (view === "requests" && parts[1] && /^\d+$/.test(parts[1])) {
      var id = Number(parts[1]);
      if (id !== state.selected || !state.detail || state.detail.id !== id) selectRequest(id);
    }
  }

  // -- start -----------------------------------------------------------------

  function start() {
    if (!token) { showLogin(); return; }
    $("app").hidden = false;
    $("nav").hidden = false;
    window.addEventListener("hashchange", route);
    route();
    ["filter-path", "filter-status"].forEach(function (id) { $(id).addEventListener("input", renderRequests); });
    $("filter-method").addEventListener("change", renderRequests);
    $("requests").addEventListener("click", function (ev) {
      var tr = ev.target.closest("tr[data-id]");
      if (tr) location.hash = "#/requests/" + Number(tr.getAttribute("data-id"));
    });
    $("requests").addEventListener("keydown", function (ev) {
      var tr = ev.target.closest("tr[data-id]");
      if (tr && ev.key === "Enter") location.hash = "#/requests/" + Number(tr.getAttribute("data-id"));
    });
    $("clear-requests").addEventListener("click", function () {
      if (!window.confirm("Forget every captured request?")) return;
      api("/requests", {method: "DELETE"}).then(function () {
        state.requests.clear(); state.selected = null; renderRequests(); renderEmptyDetail();
      }, function (e) { window.alert("Could not clear: " + e.message); });
    });
    api("/status").then(onStatus, function () {});
    loadRequests();
    connectEvents();
    // Relative times ("in 12 min") age between status events too.
    window.setInterval(function () {
      if (state.status) renderDHT(state.status);
      if (state.events && Date.now() - state.lastEvent > 5000) setLive(false, "waiting…");
    }, 5000);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
