// The console's shell: sign-in, navigation and a hash router (#/page/params...). The page
// itself is static; everything shown comes from the management API.

import { can, loadSession, session, signIn, signOut, whenSignedOut } from "./api.js";
import { alert, append, clear, field, h, notify } from "./dom.js";
import { go } from "./nav.js";
import { GROUPS, PAGES } from "./pages/index.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
let cleanup = null;
let rendering = 0;

function allowedPages() {
  return PAGES.filter((p) => can(p.right));
}

function route() {
  const raw = location.hash.startsWith("#/") ? location.hash.slice(2) : "";
  const [path, ...params] = raw.split("/").map((part) => decodeURIComponent(part));
  return { path, params };
}

function renderNav(current) {
  clear(nav);
  const pages = allowedPages();
  nav.hidden = pages.length === 0;
  for (const group of GROUPS) {
    const inGroup = pages.filter((p) => p.group === group);
    if (!inGroup.length) continue;
    const headingId = `nav-${group.toLowerCase()}`;
    append(
      nav,
      h("h2", { id: headingId, text: group }),
      h(
        "ul",
        { "aria-labelledby": headingId },
        inGroup.map((p) =>
          h("li", {}, h("a", { href: `#/${p.path}`, "aria-current": p.path === current ? "page" : null, text: p.title })),
        ),
      ),
    );
  }
}

function renderWho() {
  clear(who);
  if (!session.policies.length) return;
  append(
    who,
    h("span", { text: "Signed in as" }),
    session.policies.map((p) => h("span", { class: "policy", text: p })),
    h("button", { type: "button", class: "secondary", on: { click: () => go("signin") }, text: "Add a credential" }),
    h(
      "button",
      {
        type: "button",
        class: "secondary",
        on: {
          click: async () => {
            await signOut();
            showSignIn();
          },
        },
        text: "Sign out",
      },
    ),
  );
}

// Focus follows navigation (a screen reader then announces the new page), but not on the
// first paint after a load: the keyboard starts at the top, where the skip link is.
let firstPaint = true;

function focusHeading() {
  if (firstPaint) {
    firstPaint = false;
    return;
  }
  const heading = main.querySelector("h1");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: false });
  }
}

function signInForm(adding) {
  const strings = h("textarea", {
    name: "connection-strings",
    rows: "4",
    autocomplete: "off",
    spellcheck: "false",
    class: "code",
  });
  const policy = h("input", { type: "text", name: "policy", autocomplete: "username", spellcheck: "false" });
  const key = h("input", { type: "password", name: "key", autocomplete: "current-password" });
  const problem = h("div", { "aria-live": "assertive" });
  const form = h(
    "form",
    {
      class: "card",
      on: {
        submit: async (event) => {
          event.preventDefault();
          clear(problem);
          const credentials = strings.value
            .split("\n")
            .map((line) => line.trim())
            .filter(Boolean)
            .map((connectionString) => ({ connectionString }));
          if (policy.value.trim() || key.value.trim()) {
            credentials.push({ policyName: policy.value.trim(), key: key.value.trim() });
          }
          if (!credentials.length) {
            append(problem, alert("Paste a connection string, or give a policy name and its key."));
            return;
          }
          try {
            await signIn(credentials);
            strings.value = "";
            key.value = "";
            notify(adding ? "Credential added." : "Signed in.");
            if (route().path === "signin") history.replaceState(null, "", "#/");
            start();
          } catch (error) {
            append(problem, alert(error.message));
          }
        },
      },
    },
    field(
      "Connection strings",
      strings,
      "One per line: HostName=…;SharedAccessKeyName=…;SharedAccessKey=… (a DPS policy, a hub policy, or both).",
    ),
    h(
      "fieldset",
      {},
      h("legend", { text: "Or a policy name and its key" }),
      field("Policy name", policy, "For example provisioningserviceowner or iothubowner."),
      field("Key", key),
    ),
    problem,
    h("div", { class: "actions" }, h("button", { type: "submit", text: adding ? "Add credential" : "Sign in" })),
  );
  return form;
}

function showSignIn(adding = false) {
  if (cleanup) cleanup();
  cleanup = null;
  if (!adding) {
    nav.hidden = true;
    renderWho();
  }
  clear(main);
  append(
    main,
    h(
      "section",
      { class: "login", "aria-labelledby": "signin-title" },
      h("h1", { id: "signin-title", text: adding ? "Add a credential" : "Sign in to iotdps" }),
      h("p", {
        class: "muted",
        text: adding
          ? "Add another policy to this session, for example a hub policy next to the provisioning service's."
          : "Use a management policy's connection string or key (iotdps up shows them once; they are in access-policies.json in the data dir). The key is exchanged for a session cookie and is not kept by the page.",
      }),
      signInForm(adding),
    ),
  );
  focusHeading();
}

async function render() {
  if (location.hash && !location.hash.startsWith("#/")) return; // an in-page anchor, not a route
  const ticket = ++rendering;
  const { path, params } = route();
  if (path === "signin") {
    renderNav(null);
    showSignIn(true);
    return;
  }
  const pages = allowedPages();
  const page = pages.find((p) => p.path === path);
  if (!page) {
    if (pages.length) {
      location.replace(`#/${pages[0].path}`);
    } else {
      renderNav(null);
      clear(main);
      append(main, h("h1", { text: "Nothing to show" }), alert("The policies of this session grant no right this console uses.", "warn"));
    }
    return;
  }
  renderNav(page.path);
  if (cleanup) cleanup();
  cleanup = null;
  document.title = `${page.title} · iotdps console`;
  clear(main);
  append(main, h("p", { class: "muted", text: "Loading…" }));
  try {
    const module = await page.load();
    if (ticket !== rendering) return;
    const view = h("div", { class: "page" });
    const result = await module.render(view, params);
    if (ticket !== rendering) {
      if (typeof result === "function") result();
      return;
    }
    clear(main);
    main.append(view);
    cleanup = typeof result === "function" ? result : null;
    focusHeading();
  } catch (error) {
    if (ticket !== rendering) return;
    clear(main);
    append(main, h("h1", { text: page.title }), alert(error.message || String(error)));
  }
}

async function start() {
  renderWho();
  window.removeEventListener("hashchange", render);
  window.addEventListener("hashchange", render);
  await render();
}

// The skip link moves focus without touching the address (the router owns #/...).
document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});

whenSignedOut(() => {
  notify("Your session has ended; sign in again.", "bad");
  showSignIn();
});

(async () => {
  try {
    if (await loadSession()) {
      await start();
    } else {
      showSignIn();
    }
  } catch (error) {
    clear(main);
    append(main, h("h1", { text: "The console could not start" }), alert(error.message || String(error)));
  }
})();
