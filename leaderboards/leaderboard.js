// Sortable columns and filters for a leaderboard page; the rows are in the page (no data fetched).
(function () {
  "use strict";
  const table = document.getElementById("board");
  const body = table.tBodies[0];
  const filters = [...document.querySelectorAll("select[data-filter]")];
  let sorted = { column: -1, descending: true };

  function value(row, column) {
    const cell = row.cells[column];
    const number = cell.dataset.value;
    return number !== undefined && number !== "" ? Number(number) : cell.textContent.trim().toLowerCase();
  }

  function sortBy(column) {
    const descending = sorted.column === column ? !sorted.descending : true;
    sorted = { column, descending };
    const rows = [...body.rows];
    rows.sort((a, b) => {
      const x = value(a, column), y = value(b, column);
      const missing = (v) => v === "" || (typeof v === "number" && Number.isNaN(v));
      if (missing(x) !== missing(y)) return missing(x) ? 1 : -1;  // empty cells last either way
      const order = x < y ? -1 : x > y ? 1 : 0;
      return descending ? -order : order;
    });
    body.append(...rows);
    [...table.tHead.rows[0].cells].forEach((cell, index) => {
      cell.setAttribute("aria-sort", index === column ? (descending ? "descending" : "ascending") : "none");
    });
  }

  function applyFilters() {
    let shown = 0;
    for (const row of body.rows) {
      const visible = filters.every((select) => !select.value || row.dataset[select.dataset.filter] === select.value);
      row.hidden = !visible;
      if (visible) shown++;
    }
    document.getElementById("shown").textContent = shown + " of " + body.rows.length + " rows";
  }

  [...table.tHead.rows[0].cells].forEach((cell, index) => cell.addEventListener("click", () => sortBy(index)));
  filters.forEach((select) => select.addEventListener("change", applyFilters));
  applyFilters();
})();
