// Rating page: answers stay in this browser (localStorage) and download as a JSON file.
(function () {
  "use strict";
  var form = document.getElementById("rating");
  var page = form.getAttribute("data-page");
  var store = "lavise-ratings-" + page;
  var rater = document.getElementById("rater");
  var status = document.getElementById("status");

  function collect() {
    var items = {};
    form.querySelectorAll(".item").forEach(function (item) {
      var id = item.getAttribute("data-item");
      var ans = {};
      ["A", "B"].forEach(function (side) {
        var boxes = item.querySelectorAll('input[data-side="' + side + '"]');
        ans[side] = Array.prototype.map.call(boxes, function (b) { return b.checked; });
      });
      var pref = item.querySelector('input[name="prefer-' + id + '"]:checked');
      ans.prefer = pref ? pref.value : null;
      ans.seen = item.getAttribute("data-seen") === "1";
      items[id] = ans;
    });
    return { format: "lavise-ratings/1", page: page, rater: rater.value.trim(), items: items,
             saved: new Date().toISOString() };
  }

  function save() {
    var data = collect();
    localStorage.setItem(store, JSON.stringify(data));
    var done = 0, total = 0;
    Object.keys(data.items).forEach(function (k) { total++; if (data.items[k].prefer) done++; });
    status.textContent = done + " of " + total + " items answered (saved in this browser)";
  }

  function restore() {
    var raw = localStorage.getItem(store);
    if (!raw) return;
    var data;
    try { data = JSON.parse(raw); } catch (e) { return; }
    rater.value = data.rater || "";
    form.querySelectorAll(".item").forEach(function (item) {
      var id = item.getAttribute("data-item");
      var ans = data.items && data.items[id];
      if (!ans) return;
      ["A", "B"].forEach(function (side) {
        var boxes = item.querySelectorAll('input[data-side="' + side + '"]');
        (ans[side] || []).forEach(function (v, i) { if (boxes[i]) boxes[i].checked = !!v; });
      });
      if (ans.prefer) {
        var r = item.querySelector('input[name="prefer-' + id + '"][value="' + ans.prefer + '"]');
        if (r) r.checked = true;
      }
      if (ans.seen) item.setAttribute("data-seen", "1");
    });
  }

  form.addEventListener("change", function (e) {
    var item = e.target.closest(".item");
    if (item) item.setAttribute("data-seen", "1");
    save();
  });
  rater.addEventListener("input", save);
  document.getElementById("download").addEventListener("click", function () {
    var data = collect();
    var blob = new Blob([JSON.stringify(data, null, 1)], { type: "application/json" });
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "ratings-" + (data.rater || "anonymous").replace(/[^A-Za-z0-9_-]+/g, "_") + ".json";
    document.body.appendChild(a);
    a.click();
    a.remove();
  });
  restore();
  save();
})();
