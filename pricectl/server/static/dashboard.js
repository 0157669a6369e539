/* The dashboard: a table of live prices, honest about staleness.
 *
 * One price stream per page for the page's whole life: a SharedWorker holds it for
 * every tab of this origin (feed-worker.js); without SharedWorker the page holds
 * it itself (feed.js). It is replaced only when the set of pairs changes and is
 * closed on pagehide. Rendering is debounced by the server's
 * PRICE_STREAM_UPDATE_DEBOUNCE_MS (`update_debounce_ms` from /api/market-data/config).
 * A value is Stale when ingest says so, when serve sends `event: stale` for its pair,
 * or when it is older than stale_after; values that came from REST polling (the stream
 * being down) are shown as Cached. Ages are computed on the server's clock: the stream
 * sends it (`event: clock`) and the page keeps the offset, so a machine whose clock is a
 * minute behind still shows the right age and turns Stale on time.
 *
 * The pair picker: any pair the exchange lists can be added (suggestions come from
 * /api/market-data/pairs?q=) and any row removed, without a reload. The set is kept in
 * the URL (?pairs=) and in localStorage; changing it re-creates the one stream for the
 * new set (and only then). Prices are shown to the pair's tick size.
 */
(function () {
  "use strict";

  var SOURCE = { ws: "Live", rest: "REST", cache: "Cached" };
  var rows = {}; // pair -> {tr, cells, data, via}
  var cfg = null;
  var feed = null; // {send(msg), stats(): Promise, close()}
  var renderTimer = null;
  var dirty = {};
  var pending = {};
  var statsSeq = 0;
  var clockOffset = 0; // server clock - Date.now(), from the stream's clock events
  var decimals = {}; // pair -> decimals of its tick size (from /api/market-data/pairs)
  var pairs = []; // the pairs shown, in order
  var STORE = "pricectl.pairs";
  var PAIRS_API = "/api/market-data/pairs";
  var PRICES_API = "/api/market-data/prices";
  window.pricectl = { renders: 0, mode: null, stats: null, pairs: [], clockOffset: 0 };

  function now() { return Date.now() + clockOffset; }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  /* "43250.12000000" with 2 decimals -> "43250.12"; unknown decimals: as sent. */
  function fmtPrice(pair, text) {
    var n = decimals[pair];
    if (text == null || n == null || typeof text !== "string" || !/^-?\d+(\.\d*)?$/.test(text)) {
      return text == null ? "" : text;
    }
    var parts = text.split(".");
    if (n === 0) return parts[0];
    var frac = ((parts[1] || "") + "0".repeat(n)).slice(0, n);
    return parts[0] + "." + frac;
  }

  function buildTable(list) {
    var body = document.querySelector("#prices tbody");
    body.textContent = "";
    rows = {};
    list.forEach(addRow);
  }

  function addRow(pair) {
    var body = document.querySelector("#prices tbody");
    (function () {
      var tr = el("tr");
      tr.dataset.pair = pair;
      var cells = {
        pair: el("td", "pair", pair), price: el("td", "num price", "—"),
        change: el("td", "num change", ""), bid: el("td", "num bid", ""),
        ask: el("td", "num ask", ""), age: el("td", "num age", ""), source: el("td", "src"),
      };
      cells.badge = el("span", "badge", "");
      cells.stale = el("span", "stale", "Stale");
      cells.stale.hidden = true;
      cells.source.appendChild(cells.badge);
      cells.source.appendChild(cells.stale);
      cells.remove = el("td", "actions");
      var btn = el("button", "remove", "×");
      btn.type = "button";
      btn.title = "Remove " + pair;
      btn.setAttribute("aria-label", "Remove " + pair);
      btn.addEventListener("click", function () { removePair(pair); });
      cells.remove.appendChild(btn);
      ["pair", "price", "change", "bid", "ask", "age", "source", "remove"].forEach(function (k) {
        tr.appendChild(cells[k]);
      });
      body.appendChild(tr);
      rows[pair] = { tr: tr, cells: cells, data: null, via: null, marked: false };
    })();
  }

  function stampMs(d) {
    if (d.ingest_ns) return d.ingest_ns / 1e6;
    return d.event_ms || 0;
  }

  function isStale(row) {
    var d = row.data;
    if (!d) return true;
    return !!d.stale || row.marked || now() - stampMs(d) > cfg.stale_after_ms;
  }

  function fmtAge(ms) {
    if (ms < 0) ms = 0;
    if (ms < 10000) return (ms / 1000).toFixed(1) + "s";
    if (ms < 120000) return Math.round(ms / 1000) + "s";
    return Math.round(ms / 60000) + "m";
  }

  function renderRow(row) {
    var d = row.data;
    var c = row.cells;
    if (!d) return;
    c.price.textContent = fmtPrice(d.pair, d.price);
    var pct = d.change_pct;
    c.change.textContent = pct == null ? "" : (pct.charAt(0) === "-" ? pct : "+" + pct) + "%";
    c.change.className = "num change " + (pct == null ? "" : pct.charAt(0) === "-" ? "down" : "up");
    c.bid.textContent = fmtPrice(d.pair, d.bid);
    c.ask.textContent = fmtPrice(d.pair, d.ask);
    var label = row.via === "rest" ? "Cached" : SOURCE[d.source] || d.source;
    c.badge.textContent = label;
    c.badge.dataset.source = label;
    renderAge(row);
  }

  function renderAge(row) {
    if (!row.data) return;
    row.cells.age.textContent = fmtAge(now() - stampMs(row.data));
    var stale = isStale(row);
    row.cells.stale.hidden = !stale;
    row.tr.classList.toggle("is-stale", stale);
  }

  function render() {
    renderTimer = null;
    Object.keys(pending).forEach(function (pair) {
      var row = rows[pair];
      if (row) {
        row.data = pending[pair].data;
        row.via = pending[pair].via;
        row.marked = false;
        renderRow(row);
      }
    });
    pending = {};
    window.pricectl.renders += 1;
  }

  function schedule(pair, data, via) {
    if (!rows[pair]) return;
    var cur = pending[pair] || rows[pair];
    // never let an older update replace a newer one of the same epoch
    if (cur.data && via === "stream" && cur.via === "stream" && cur.data.epoch === data.epoch &&
        cur.data.seq > data.seq) return;
    pending[pair] = { data: data, via: via };
    if (!renderTimer) renderTimer = setTimeout(render, cfg.update_debounce_ms);
  }

  var CONN_TEXT = { live: "Live", connecting: "Connecting…", reconnecting: "Reconnecting…",
                    offline: "Offline · showing cached prices", idle: "Idle" };

  function onMessage(msg) {
    if (msg.type === "update") {
      schedule(msg.data.pair, msg.data, "stream");
    } else if (msg.type === "stale") {
      var row = rows[msg.data.pair];
      // only if no newer update is on its way or shown
      var cur = (pending[msg.data.pair] || row || {}).data;
      var m = msg.data;
      if (row && (!cur || cur.epoch < m.last_epoch ||
                  (cur.epoch === m.last_epoch && cur.seq <= m.last_seq))) {
        row.marked = true;
        renderAge(row);
      }
    } else if (msg.type === "clock") {
      clockOffset = msg.offsetMs;
      window.pricectl.clockOffset = clockOffset;
      Object.keys(rows).forEach(function (p) { renderAge(rows[p]); });
    } else if (msg.type === "rest") {
      msg.prices.forEach(function (d) { schedule(d.pair, d, "rest"); });
    } else if (msg.type === "status") {
      var conn = document.getElementById("conn");
      conn.dataset.state = msg.state;
      conn.textContent = CONN_TEXT[msg.state] || msg.state;
    } else if (msg.type === "stats") {
      window.pricectl.stats = msg.stats;
    }
  }

  function connectShared(pairs) {
    var worker = new SharedWorker("/static/feed-worker.js", { name: "pricectl-feed" });
    var port = worker.port;
    port.onmessage = function (m) { onMessage(m.data); };
    port.start();
    port.postMessage({ type: "subscribe", pairs: pairs, failoverMs: cfg.failover_ms });
    return {
      mode: "shared",
      setPairs: function (next) {
        port.postMessage({ type: "subscribe", pairs: next, failoverMs: cfg.failover_ms });
      },
      close: function () { port.postMessage({ type: "close" }); },
      refresh: function () { port.postMessage({ type: "stats", id: ++statsSeq }); },
    };
  }

  function connectDirect(pairs) {
    var f = new PriceFeed({ emit: onMessage, failoverMs: cfg.failover_ms });
    f.setPairs(pairs);
    return {
      mode: "direct",
      setPairs: function (next) { f.setPairs(next); },
      close: function () { f.close(); },
      refresh: function () {
        var st = f.stats();
        st.mode = "direct";
        st.tabs = 1;
        window.pricectl.stats = st;
      },
    };
  }

  function savedPairs() {
    var q = new URLSearchParams(location.search);
    var text = q.get("pairs");
    if (!text) {
      try { text = localStorage.getItem(STORE); } catch (e) { text = null; }
    }
    if (!text) return null;
    return text.split(",").map(function (p) { return p.trim(); }).filter(Boolean);
  }

  function keep() {
    var q = new URLSearchParams(location.search);
    q.set("pairs", pairs.join(","));
    history.replaceState(null, "", location.pathname + "?" + q.toString().replace(/%2F/g, "/")
      .replace(/%2C/g, ","));
    try { localStorage.setItem(STORE, pairs.join(",")); } catch (e) { /* private mode */ }
    window.pricectl.pairs = pairs.slice();
  }

  function describe(list) {
    // Canonical names, tick sizes; unknown names are left out by the server.
    return fetch(PAIRS_API + "?pairs=" + encodeURIComponent(list.join(",")), { cache: "no-store" })
      .then(function (r) { return r.json(); })
      .then(function (doc) {
        (doc.pairs || []).forEach(function (e) {
          if (e.decimals != null) decimals[e.pair] = e.decimals;
        });
        return (doc.pairs || []).map(function (e) { return e.pair; });
      });
  }

  function showError(text) {
    var e = document.getElementById("picker-error");
    e.textContent = text || "";
    e.hidden = !text;
  }

  function setPairs(next) {
    pairs = next;
    keep();
    if (feed) feed.setPairs(pairs);
  }

  function addPair(text) {
    showError("");
    return describe([text]).then(function (found) {
      if (!found.length) {
        return fetch(PAIRS_API + "?q=" + encodeURIComponent(text) + "&limit=5")
          .then(function (r) { return r.json(); })
          .then(function (doc) {
            var near = (doc.pairs || []).map(function (e) { return e.pair; });
            showError("Unknown pair " + text + (near.length ? ": did you mean " + near.join(", ") + "?" : ""));
          });
      }
      var pair = found[0];
      if (pairs.indexOf(pair) >= 0) return;
      // Turn it on first (a REST request): a refusal (the cluster's cap, the rate of new
      // pairs) is shown here and the stream of the other pairs is left as it is.
      return fetch(PRICES_API + "?pairs=" + encodeURIComponent(pair), { cache: "no-store" })
        .then(function (r) {
          if (r.ok) {
            addRow(pair);
            setPairs(pairs.concat([pair]));
            return;
          }
          return r.json().then(function (doc) {
            showError("Cannot add " + pair + ": " + (doc.detail || doc.error || r.status));
          });
        });
    });
  }

  function removePair(pair) {
    var row = rows[pair];
    if (!row) return;
    row.tr.remove();
    delete rows[pair];
    delete pending[pair];
    setPairs(pairs.filter(function (p) { return p !== pair; }));
  }

  function picker() {
    var form = document.getElementById("picker");
    var input = document.getElementById("pair-search");
    var list = document.getElementById("pair-suggestions");
    var timer = null;
    input.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        var q = input.value.trim();
        if (!q) return;
        fetch(PAIRS_API + "?q=" + encodeURIComponent(q) + "&limit=10", { cache: "no-store" })
          .then(function (r) { return r.json(); })
          .then(function (doc) {
            list.textContent = "";
            (doc.pairs || []).forEach(function (e) {
              var o = document.createElement("option");
              o.value = e.pair;
              list.appendChild(o);
            });
            window.pricectl.suggestions = (doc.pairs || []).map(function (e) { return e.pair; });
          });
      }, 150);
    });
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var text = input.value.trim();
      if (!text) return;
      addPair(text).then(function () { input.value = ""; });
    });
    window.pricectl.addPair = addPair;
    window.pricectl.removePair = removePair;
  }

  function start() {
    var wanted = savedPairs() || cfg.pairs;
    describe(wanted).then(function (found) {
      pairs = found.length ? found : cfg.pairs.slice();
      keep();
      buildTable(pairs);
      var q = new URLSearchParams(location.search);
      var shared = typeof SharedWorker === "function" && q.get("shared") !== "0";
      try {
        feed = shared ? connectShared(pairs) : connectDirect(pairs);
      } catch (err) {
        feed = connectDirect(pairs);
      }
      window.pricectl.mode = feed.mode;
      window.pricectl.refreshStats = function () { feed.refresh(); };
    });
  }

  setInterval(function () {
    Object.keys(rows).forEach(function (p) { renderAge(rows[p]); });
  }, 1000);

  window.addEventListener("pagehide", function () {
    if (feed) feed.close();
    feed = null;
  });
  window.addEventListener("pageshow", function (e) {
    if (e.persisted && !feed && cfg) start(); // back from the bfcache
  });

  fetch("/api/market-data/config", { cache: "no-store" })
    .then(function (r) { return r.json(); })
    .then(function (c) {
      cfg = c;
      cfg.failover_ms = cfg.failover_ms || 3000;
      document.getElementById("simulated").hidden = !cfg.simulated;
      picker();
      start();
    });
})();
