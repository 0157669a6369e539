/* SharedWorker: one price stream for every tab of this origin (see feed.js). */
"use strict";
importScripts("feed.js");

var ports = new Map(); // MessagePort -> pairs it wants
var feed = new PriceFeed({
  emit: function (msg) {
    ports.forEach(function (_pairs, port) { port.postMessage(msg); });
  },
});

function resubscribe() {
  var union = {};
  ports.forEach(function (pairs) { pairs.forEach(function (p) { union[p] = true; }); });
  var all = Object.keys(union);
  if (all.length) feed.setPairs(all); else feed.close();
}

self.onconnect = function (e) {
  var port = e.ports[0];
  ports.set(port, []);
  port.onmessage = function (m) {
    var msg = m.data || {};
    if (msg.type === "subscribe") {
      if (msg.failoverMs) feed.failoverMs = msg.failoverMs;
      ports.set(port, msg.pairs || []);
      resubscribe();
      port.postMessage({ type: "status", state: feed.state });
      Object.keys(feed.latest).forEach(function (p) { port.postMessage(feed.latest[p]); });
    } else if (msg.type === "close") {
      ports.delete(port);
      resubscribe();
    } else if (msg.type === "stats") {
      var st = feed.stats();
      st.mode = "shared";
      st.tabs = ports.size;
      port.postMessage({ type: "stats", id: msg.id, stats: st });
    }
  };
  port.start();
};
