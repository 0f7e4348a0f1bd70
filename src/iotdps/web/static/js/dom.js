// Building the page without parsing HTML strings: every text from the server goes in as a text node, so
// nothing it contains can become markup (no XSS through a registration id or a CA subject).

let uid = 0;

/** A unique id for label/for and aria-describedby pairs. */
export function newId(prefix = "f") {
  uid += 1;
  return `${prefix}-${uid}`;
}

/**
 * h("button", {class: "secondary", on: {click: fn}}, "Save")
 * Props: class, text, on (event handlers), dataset, and any attribute (aria-*, for, id, type...).
 * Boolean true sets an empty attribute; false, null and undefined leave it out.
 */
export function h(tag, props = {}, ...children) {
  const el = tag.startsWith("svg:")
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "on") {
      for (const [event, handler] of Object.entries(value)) el.addEventListener(event, handler);
    } else if (key === "text") {
      el.textContent = String(value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "value" && "value" in el) {
      el.value = value;
    } else if (key === "checked" || key === "selected" || key === "disabled") {
      el[key] = Boolean(value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, ...children);
  return el;
}

export function append(el, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/** A labelled control: label + optional hint (its description, not part of its name) + the control. */
export function field(labelText, control, hint) {
  const id = control.id || newId("field");
  control.id = id;
  let hintEl = null;
  if (hint) {
    const hintId = `${id}-hint`;
    control.setAttribute("aria-describedby", [control.getAttribute("aria-describedby"), hintId].filter(Boolean).join(" "));
    hintEl = h("span", { class: "hint", id: hintId, text: hint });
  }
  return h("div", { class: "field" }, h("label", { for: id, text: labelText }), hintEl, control);
}

export function checkbox(labelText, checked, props = {}) {
  const input = h("input", { type: "checkbox", checked, ...props });
  return { input, el: h("label", { class: "check" }, input, labelText) };
}

export function select(options, selected, props = {}) {
  return h(
    "select",
    props,
    options.map(([value, text]) => h("option", { value, selected: value === selected, text })),
  );
}

export function badge(text, kind = "plain") {
  return h("span", { class: `badge ${kind}`, text });
}

export function alert(text, kind = "bad") {
  return h("div", { class: `alert ${kind}`, role: kind === "bad" ? "alert" : "status" }, text);
}

/** A data table: columns [{title, cell(row) -> node|text, num?}], rows, caption (for screen readers). */
export function table(columns, rows, caption) {
  return h(
    "table",
    {},
    caption ? h("caption", { text: caption }) : null,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null, text: c.title })))),
    h(
      "tbody",
      {},
      rows.length
        ? rows.map((row) => h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : null }, c.cell(row)))))
        : h("tr", {}, h("td", { colspan: String(columns.length), class: "muted", text: "Nothing to show." })),
    ),
  );
}

export function facts(pairs) {
  return h(
    "dl",
    { class: "facts" },
    pairs.filter(Boolean).map(([k, v]) => [h("dt", { text: k }), h("dd", {}, v ?? "—")]),
  );
}

/** A short message in the corner (also read out by screen readers: the region is aria-live). */
export function notify(text, kind = "ok") {
  const box = document.getElementById("notices");
  const note = h("div", { class: `notice ${kind}`, text: text.charAt(0).toUpperCase() + text.slice(1) });
  box.append(note);
  setTimeout(() => note.remove(), kind === "bad" ? 9000 : 4500);
}

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

/** Read a chosen file as text (a PEM). */
export function readFileText(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(new Error(`could not read ${file.name}`));
    reader.readAsText(file);
  });
}
