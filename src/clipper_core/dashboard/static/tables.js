// Keyed table rows: a row is built once per key and only its cells' text changes afterwards, so
// inputs inside a row keep their value and focus while frames arrive.

export function cell(tr, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

export function setText(node, text, cls) {
  const t = text == null ? "–" : String(text);
  if (node.textContent !== t) node.textContent = t;
  if (cls !== undefined && node.dataset.cls !== cls) {
    if (node.dataset.cls) node.classList.remove(...node.dataset.cls.split(" "));
    if (cls) node.classList.add(...cls.split(" "));
    node.dataset.cls = cls;
  }
}

/**
 * Make tbody hold one row per item, in order: build(item) -> tr (its cells created) for new
 * keys, update(tr, item) for every item; rows of keys no longer present go.
 */
export function syncRows(tbody, items, key, build, update) {
  const have = new Map();
  for (const tr of [...tbody.children]) have.set(tr.dataset.key, tr);
  let prev = null;
  for (const item of items) {
    const k = key(item);
    let tr = have.get(k);
    if (tr) {
      have.delete(k);
    } else {
      tr = build(item);
      tr.dataset.key = k;
    }
    const want = prev ? prev.nextSibling : tbody.firstChild;
    if (want !== tr) tbody.insertBefore(tr, want);
    update(tr, item);
    prev = tr;
  }
  for (const tr of have.values()) tr.remove();
}

export function button(label, onClick, cls) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (cls) b.className = cls;
  b.addEventListener("click", onClick);
  return b;
}
