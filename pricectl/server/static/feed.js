/* pricectl price feed: ONE EventSource for a set of pairs, with a REST fallback.
 *
 * Loaded by the SharedWorker (feed-worker.js: one connection shared by every tab)
 * and, where SharedWorker is missing, by the page itself. It never holds more than
 * one EventSource: the browser reconnects it by itself (honouring the server's
 * `retry:` and sending Last-Event-ID); only when the browser gives up for good
 * (readyState CLOSED, e.g. after a 5xx) is a new one created, after a backoff.
 * While the stream is not open for longer than `failoverMs`, the REST snapshot is
 * polled and its values are reported with via "rest" so the page marks them Cached.
 *
 * Messages emitted: {type:"status", state:"connecting"|"live"|"reconnecting"|"offline"}
 *                   {type:"update", kind:"snapshot"|"price", data:{...update (docs/protocol.md)...}}
 *                   {type:"stale", data:{pair, epoch, seq, reason, ...}}: serve says the
 *                     pair has had nothing for stale_after (no id: lastEventId is kept)
 *                   {type:"clock", offsetMs}: server clock minus this machine's, from the
 *                     stream's `event: clock` (the opening and every ping), so ages are
 *                     computed on the server's clock, not on a skewed local one
 *                   {type:"rest", prices:[...]}
 */
(function (root) {
  "use strict";

  function PriceFeed(opts) {
    this.streamPath = opts.streamPath || "/api/market-data/stream";
    this.pricesPath = opts.pricesPath || "/api/market-data/prices";
    this.failoverMs = opts.failoverMs || 3000;
    this.pollMs = opts.pollMs || 2000;
    this.emit = opts.emit;
    this.pairs = [];
    this.es = null;
    this.state = "idle";
    this.created = 0; // EventSources ever created (for tests and debugging)
    this.failures = 0;
    this.reconnectTimer = null;
    this.failoverTimer = null;
    this.pollTimer = null;
    this.latest = {}; // pair -> last message, for tabs that join later
  }

  PriceFeed.prototype.setPairs = function (pairs) {
    var next = pairs.slice().sort();
    if (next.join(",") === this.pairs.join(",") && (this.es || this.reconnectTimer)) return;
    this.close();
    this.pairs = next;
    if (next.length) this.connect();
  };

  PriceFeed.prototype.setState = function (state) {
    if (this.state === state) return;
    this.state = state;
    this.emit({ type: "status", state: state });
  };

  PriceFeed.prototype.connect = function () {
    var self = this;
    if (this.es || !this.pairs.length) return; // never two at once
    this.reconnectTimer = null;
    var url = this.streamPath + "?pairs=" + encodeURIComponent(this.pairs.join(","));
    var es = new EventSource(url);
    this.es = es;
    this.created += 1;
    this.setState(this.created === 1 ? "connecting" : "reconnecting");
    this.armFailover();
    es.onopen = function () {
      if (self.es !== es) return;
      self.failures = 0;
      self.stopFallback();
      self.setState("live");
    };
    var onEvent = function (kind) {
      return function (e) {
        if (self.es !== es) return;
        var data;
        try { data = JSON.parse(e.data); } catch (err) { return; }
        var msg = { type: "update", kind: kind, data: data };
        self.latest[data.pair] = msg;
        delete self.latest["stale " + data.pair];
        self.emit(msg);
      };
    };
    es.addEventListener("snapshot", onEvent("snapshot"));
    es.addEventListener("price", onEvent("price"));
    es.addEventListener("stale", function (e) {
      if (self.es !== es) return;
      var data;
      try { data = JSON.parse(e.data); } catch (err) { return; }
      var msg = { type: "stale", data: data };
      self.latest["stale " + data.pair] = msg;
      self.emit(msg);
    });
    es.addEventListener("clock", function (e) {
      if (self.es !== es) return;
      var data;
      try { data = JSON.parse(e.data); } catch (err) { return; }
      if (typeof data.server_ms !== "number") return;
      // A clock event can only arrive late: the largest of the recent offsets is the
      // least delayed one.
      self.clockSamples = (self.clockSamples || []).concat([data.server_ms - Date.now()]);
      if (self.clockSamples.length > 8) self.clockSamples.shift();
      var msg = { type: "clock", offsetMs: Math.max.apply(null, self.clockSamples) };
      self.latest["clock"] = msg;
      self.emit(msg);
    });
    es.onerror = function () {
      if (self.es !== es) return;
      if (es.readyState === 2) { // CLOSED: the browser gave up; make a new one later
        es.close();
        self.es = null;
        self.failures += 1;
        var delay = Math.min(10000, 500 * Math.pow(2, self.failures)) * (0.5 + Math.random() / 2);
        self.reconnectTimer = setTimeout(function () { self.connect(); }, delay);
      }
      self.setState(self.pollTimer ? "offline" : "reconnecting");
      self.armFailover();
    };
  };

  PriceFeed.prototype.armFailover = function () {
    var self = this;
    if (this.failoverTimer || this.pollTimer) return;
    this.failoverTimer = setTimeout(function () {
      self.failoverTimer = null;
      if (self.state !== "live") self.startPolling();
    }, this.failoverMs);
  };

  PriceFeed.prototype.startPolling = function () {
    var self = this;
    if (this.pollTimer) return;
    this.setState("offline");
    var poll = function () {
      var url = self.pricesPath + "?pairs=" + encodeURIComponent(self.pairs.join(","));
      fetch(url, { cache: "no-store" }).then(function (r) {
        return r.ok ? r.json() : null;
      }).then(function (body) {
        if (body && self.pollTimer) self.emit({ type: "rest", prices: body.prices || [] });
      }).catch(function () {});
    };
    this.pollTimer = setInterval(poll, this.pollMs);
    poll();
  };

  PriceFeed.prototype.stopFallback = function () {
    if (this.failoverTimer) clearTimeout(this.failoverTimer);
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.failoverTimer = null;
    this.pollTimer = null;
  };

  PriceFeed.prototype.close = function () {
    if (this.es) this.es.close();
    this.es = null;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.stopFallback();
    this.latest = {};
    this.setState("idle");
  };

  PriceFeed.prototype.stats = function () {
    return { created: this.created, open: this.es ? 1 : 0, state: this.state };
  };

  root.PriceFeed = PriceFeed;
})(typeof self !== "undefined" ? self : this);
