// Index page: search by word, sort, show only filters whose words hit their ground truth.
(function () {
  "use strict";
  var box = document.getElementById("q");
  var sort = document.getElementById("sort");
  var only = document.getElementById("matched");
  var grid = document.getElementById("cards");
  var count = document.getElementById("count");
  var cards = Array.prototype.slice.call(grid.querySelectorAll(".card"));
  var words = cards.map(function (c) { return c.getAttribute("data-w").split("|"); });

  function apply() {
    var q = box.value.trim().toLowerCase();
    var terms = q ? q.split(/\s*,\s*|\s+/).filter(Boolean) : [];
    var onlyMatched = only && only.checked;
    var shown = 0;
    for (var i = 0; i < cards.length; i++) {
      var ok = true;
      for (var j = 0; j < terms.length && ok; j++) ok = words[i].indexOf(terms[j]) >= 0;
      if (ok && onlyMatched) ok = cards[i].classList.contains("match");
      cards[i].hidden = !ok;
      if (ok) shown++;
    }
    count.textContent = shown + " of " + cards.length + " filters";
  }

  function reorder() {
    var key = sort.value;
    var sorted = cards.slice();
    if (key === "filter") {
      sorted.sort(function (a, b) { return +a.getAttribute("data-u") - +b.getAttribute("data-u"); });
    } else {
      sorted.sort(function (a, b) {
        var x = parseFloat(a.getAttribute("data-" + key)), y = parseFloat(b.getAttribute("data-" + key));
        if (isNaN(x)) x = -Infinity;
        if (isNaN(y)) y = -Infinity;
        return y - x || +a.getAttribute("data-u") - +b.getAttribute("data-u");
      });
    }
    var frag = document.createDocumentFragment();
    sorted.forEach(function (c) { frag.appendChild(c); });
    grid.appendChild(frag);
  }

  // Thumbnails: each card lists "strip slots image image ..." (file stems): the filter's
  // overlay strip (one tile per top image) and its images. They are made when the card
  // comes near the viewport, so thousands of cards stay cheap to open.
  function fill(card) {
    var th = card.querySelector(".thumbs");
    var spec = th && th.getAttribute("data-th");
    if (!spec) return;
    th.removeAttribute("data-th");
    var parts = spec.split(" ");
    var strip = "lit/" + encodeURIComponent(parts[0]) + ".png";
    var slots = parseInt(parts[1], 10);
    parts.slice(2).forEach(function (stem, k) {
      var holder = document.createElement("span");
      holder.className = "ev";
      var base = document.createElement("img");
      base.src = "thumb/" + encodeURIComponent(stem) + ".jpg";
      base.alt = "";
      var lit = document.createElement("i");
      lit.style.backgroundImage = "url('" + strip + "')";
      lit.style.backgroundSize = (slots * 100) + "% 100%";
      lit.style.backgroundPosition = (slots > 1 ? 100 * k / (slots - 1) : 0) + "% 0";
      holder.appendChild(base);
      holder.appendChild(lit);
      th.appendChild(holder);
    });
  }
  if ("IntersectionObserver" in window) {
    var io = new IntersectionObserver(function (entries) {
      entries.forEach(function (e) {
        if (e.isIntersecting) { fill(e.target); io.unobserve(e.target); }
      });
    }, { rootMargin: "600px" });
    cards.forEach(function (c) { io.observe(c); });
  } else {
    cards.forEach(fill);
  }

  box.addEventListener("input", apply);
  sort.addEventListener("change", reorder);
  if (only) only.addEventListener("change", apply);
  var m = /[#&]q=([^&]*)/.exec(location.hash);
  if (m) box.value = decodeURIComponent(m[1]);
  apply();
})();
