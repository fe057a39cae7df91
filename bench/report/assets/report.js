// Renders the report from the JSON in #report-data. Every text from the data reaches the page
// through textContent or attributes, never as markup. Rows are rendered a page at a time as the
// reader scrolls, so a report of tens of thousands of queries opens at once.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const PAGE = 100;
  const list = document.getElementById("queries");
  const sentinel = document.getElementById("more");
  const count = document.getElementById("count");
  const direction = document.getElementById("direction");
  const failures = document.getElementById("failures");
  const search = document.getElementById("search");
  let shown = [], rendered = 0;

  function el(tag, attributes, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function isMatch(dir, query, item) {
    if (!data.marks) return null;
    return dir === "t2i" ? data.caption_ids[query] === data.image_ids[item] : data.image_ids[query] === data.caption_ids[item];
  }

  function rankBadge(rank, label) {
    const badge = el("span", { class: "rank " + (rank === 1 ? "hit" : "miss") }, "rank " + rank);
    if (label) badge.prepend(el("span", { class: "run-label" }, label));
    return badge;
  }

  function strip(dir, query, run) {
    const top = data.runs[run].top[dir][query];
    if (dir === "t2i") {
      const box = el("div", { class: "strip" });
      top.forEach(([item, score]) => {
        const match = isMatch(dir, query, item);
        const figure = el("figure", { class: match === null ? "plain" : match ? "match" : "other" });
        figure.append(el("img", { src: data.thumbs[item], alt: data.image_files[item], title: data.image_files[item], loading: "lazy" }));
        figure.append(el("figcaption", {}, score.toFixed(3)));
        box.append(figure);
      });
      return box;
    }
    const captions = el("ol", { class: "captions" });
    top.forEach(([item, score]) => {
      const match = isMatch(dir, query, item);
      const kind = match === null ? "plain" : match ? "match" : "other";
      captions.append(el("li", { class: kind }, score.toFixed(3) + "  " + data.captions[item]));
    });
    return captions;
  }

  function row(dir, query) {
    const box = el("div", { class: "query", "data-query": String(query) });
    const head = el("div", { class: "head" });
    if (data.marks) {
      data.runs.forEach((run) => head.append(rankBadge(run.first_hit[dir][query], data.runs.length > 1 ? run.label : "")));
    }
    if (dir === "t2i") {
      head.append(el("span", { class: "caption" }, data.captions[query]));
      box.append(head);
    } else {
      const figure = el("div", { class: "query-image" });
      figure.append(el("img", { src: data.thumbs[query], alt: data.image_files[query], loading: "lazy" }));
      head.append(el("span", { class: "file" }, data.image_files[query]));
      box.append(figure, head);
    }
    data.runs.forEach((run, index) => box.append(strip(dir, query, index)));
    if (dir === "i2t") box.append(el("div", { style: "clear: both" }));
    return box;
  }

  function order(dir) {
    const n = data.runs[0].first_hit[dir].length;
    const queries = Array.from({ length: n }, (_, i) => i);
    if (data.runs.length > 1) {  // disagreements first: the larger gap between the two runs' ranks
      const [a, b] = data.runs.map((run) => run.first_hit[dir]);
      const gap = (q) => Math.abs(Math.log(a[q]) - Math.log(b[q]));
      return queries.sort((p, q) => gap(q) - gap(p) || Math.max(a[q], b[q]) - Math.max(a[p], b[p]) || p - q);
    }
    const ranks = data.runs[0].first_hit[dir];
    return queries.sort((p, q) => ranks[q] - ranks[p] || p - q);  // worst first
  }

  const orders = {};
  function refresh() {
    const dir = direction.value;
    orders[dir] = orders[dir] || order(dir);
    const text = search.value.trim().toLowerCase();
    const onlyFailures = failures.checked;
    shown = orders[dir].filter((q) => {
      if (onlyFailures && data.runs.every((run) => run.first_hit[dir][q] === 1)) return false;
      if (!text) return true;
      const haystack = dir === "t2i" ? data.captions[q] : data.image_files[q];
      return haystack.toLowerCase().includes(text);
    });
    list.replaceChildren();
    rendered = 0;
    count.textContent = shown.length + " of " + data.runs[0].first_hit[dir].length + " queries";
    more();
  }

  function more() {
    const dir = direction.value;
    const end = Math.min(rendered + PAGE, shown.length);
    const fragment = document.createDocumentFragment();
    for (let i = rendered; i < end; i++) fragment.append(row(dir, shown[i]));
    list.append(fragment);
    rendered = end;
  }

  direction.value = data.direction;
  if (!data.marks) failures.parentElement.hidden = true;
  new IntersectionObserver((entries) => {
    if (entries.some((entry) => entry.isIntersecting) && rendered < shown.length) more();
  }, { rootMargin: "800px" }).observe(sentinel);
  [direction, failures].forEach((control) => control.addEventListener("change", refresh));
  search.addEventListener("input", refresh);
  refresh();
})();
