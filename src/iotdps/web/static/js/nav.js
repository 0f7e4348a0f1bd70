// Links between pages: the hash router's addresses (#/page/param/...).

import { h } from "./dom.js";

export function href(path, ...params) {
  return `#/${[path, ...params].map((p) => encodeURIComponent(p)).join("/")}`;
}

export function go(path, ...params) {
  location.hash = href(path, ...params);
}

export function link(text, path, ...params) {
  return h("a", { href: href(path, ...params), text });
}
