// CA certificates: the hierarchy as a tree (by issuer), expiry warnings, upload, and proof of
// possession as a guided step: code -> signed verification certificate -> verified.
// Routes: GET/PUT/DELETE /certificates/{name}, POST .../generateVerificationCode, .../verify.

import { api, ApiError, STALE_MESSAGE } from "../api.js";
import { alert, append, badge, clear, facts, field, h, notify, readFileText, when } from "../dom.js";
import { go, link } from "../nav.js";

const DAY = 24 * 3600 * 1000;
const WARN_DAYS = 30;

function expiry(ca) {
  const ends = new Date(ca.properties.expiry);
  const left = ends.getTime() - Date.now();
  if (Number.isNaN(left)) return badge("expiry unknown", "plain");
  if (left <= 0) return badge(`expired ${ends.toLocaleDateString()}`, "bad");
  if (left < WARN_DAYS * DAY) return badge(`expires in ${Math.ceil(left / DAY)} days`, "warn");
  return badge(`valid until ${ends.toLocaleDateString()}`, "ok");
}

function verified(ca) {
  return ca.properties.isVerified ? badge("verified", "ok") : badge("not verified", "warn");
}

/** Trees of CAs: a CA's parent is the uploaded CA whose subject is its issuer. */
function forest(cas) {
  const bySubject = new Map(cas.map((ca) => [ca.properties.subject, ca]));
  const children = new Map(cas.map((ca) => [ca.name, []]));
  const roots = [];
  for (const ca of cas) {
    const { subject, issuer } = ca.properties;
    const parent = issuer && issuer !== subject ? bySubject.get(issuer) : undefined;
    if (parent && parent !== ca) children.get(parent.name).push(ca);
    else roots.push(ca);
  }
  const item = (ca, seen) => {
    const issuer = ca.properties.issuer;
    const orphan = issuer && issuer !== ca.properties.subject && !bySubject.has(issuer);
    const kids = seen.has(ca.name) ? [] : children.get(ca.name);
    seen.add(ca.name);
    return h(
      "li",
      {},
      h(
        "span",
        { class: "node" },
        h("span", { class: "node-name" }, link(ca.name, "cas", ca.name)),
        h("span", { class: "muted", text: ca.properties.subject }),
        verified(ca),
        expiry(ca),
        orphan ? badge(`issuer ${issuer} not uploaded`, "plain") : null,
      ),
      kids.length ? h("ul", {}, kids.map((kid) => item(kid, seen))) : null,
    );
  };
  const seen = new Set();
  return h("ul", { class: "tree", "aria-label": "CA hierarchy" }, roots.map((ca) => item(ca, seen)));
}

function uploadForm() {
  const name = h("input", { type: "text", name: "ca-name", required: true, spellcheck: "false" });
  const pem = h("textarea", { class: "code", name: "ca-pem", spellcheck: "false" });
  const file = h("input", { type: "file", accept: ".pem,.crt,.cer", name: "ca-file" });
  const problem = h("div");
  file.addEventListener("change", async () => {
    if (file.files.length) pem.value = await readFileText(file.files[0]);
  });
  return h(
    "form",
    {
      class: "card",
      "aria-labelledby": "upload-title",
      on: {
        submit: async (event) => {
          event.preventDefault();
          clear(problem);
          try {
            await api("PUT", `/certificates/${encodeURIComponent(name.value.trim())}`, {
              body: { certificate: pem.value },
            });
            notify(`CA ${name.value.trim()} uploaded; prove possession next.`);
            go("cas", name.value.trim());
          } catch (error) {
            append(problem, alert(error.message));
          }
        },
      },
    },
    h("h2", { id: "upload-title", text: "Upload a CA certificate" }),
    field("Name", name, "How iotdps and enrollment groups refer to it, e.g. root or factory-a."),
    field("Certificate (PEM)", pem, "Paste it, or choose the file below."),
    field("Certificate file", file),
    problem,
    h("div", { class: "actions" }, h("button", { type: "submit", text: "Upload" })),
  );
}

async function list(view) {
  const found = await api("GET", "/certificates");
  const cas = found.value || [];
  const soon = cas.filter((ca) => new Date(ca.properties.expiry).getTime() - Date.now() < WARN_DAYS * DAY);
  append(
    view,
    h("h1", { text: "CA certificates" }),
    soon.length
      ? alert(`${soon.length} CA certificate(s) expired or expiring within ${WARN_DAYS} days: ${soon.map((c) => c.name).join(", ")}.`, "warn")
      : null,
    h(
      "section",
      { class: "card", "aria-labelledby": "tree-title" },
      h("h2", { id: "tree-title", text: "Hierarchy" }),
      cas.length ? forest(cas) : h("p", { class: "muted", text: "No CA uploaded yet." }),
    ),
    uploadForm(),
  );
}

function proofSteps(view, ca) {
  const state = { ca, code: null, expires: null };
  const steps = h("ol", { class: "steps", "aria-label": "Proof of possession" });
  const problem = h("div");

  const draw = () => {
    clear(steps);
    const isVerified = state.ca.properties.isVerified;
    const stage = isVerified ? 3 : state.code ? 1 : 0;
    const cls = (i) => (i < stage ? "done" : i === stage ? "current" : null);
    const generate = h("button", {
      type: "button",
      class: state.code ? "secondary" : null,
      text: state.code ? "Generate a new code" : "Generate a verification code",
      disabled: isVerified,
      on: {
        click: async () => {
          clear(problem);
          try {
            const doc = await api("POST", `/certificates/${encodeURIComponent(ca.name)}/generateVerificationCode`, {
              etag: state.ca.etag,
            });
            state.code = doc.properties.verificationCode;
            state.expires = doc.properties.verificationCodeExpiry;
            state.ca = doc;
            draw();
          } catch (error) {
            append(problem, alert(error.stale ? STALE_MESSAGE : error.message));
          }
        },
      },
    });
    const codeBox = state.code
      ? [
          h("p", {}, "Code: ", h("code", { class: "secret", id: "verification-code", text: state.code }), " ", h("span", { class: "muted", text: `single use, until ${when(state.expires)}` })),
          h("p", { text: "Sign it with the CA's key, where the key lives (the CA toolkit):" }),
          h("pre", {}, `iotdps proof-ca-root-possession --ca ${ca.name} --verification-code ${state.code}`),
        ]
      : null;
    const pem = h("textarea", { class: "code", name: "verification-pem", spellcheck: "false" });
    const file = h("input", { type: "file", accept: ".pem,.crt,.cer", name: "verification-file" });
    file.addEventListener("change", async () => {
      if (file.files.length) pem.value = await readFileText(file.files[0]);
    });
    const verify = h(
      "form",
      {
        on: {
          submit: async (event) => {
            event.preventDefault();
            clear(problem);
            try {
              state.ca = await api("POST", `/certificates/${encodeURIComponent(ca.name)}/verify`, {
                body: { certificate: pem.value },
                etag: state.ca.etag,
              });
              state.code = null;
              notify(`CA ${ca.name} is verified: its devices can now be admitted.`);
              // Redraw the whole page: the summary's status changed too.
              window.dispatchEvent(new HashChangeEvent("hashchange"));
            } catch (error) {
              append(problem, alert(error instanceof ApiError && error.stale ? STALE_MESSAGE : error.message));
            }
          },
        },
      },
      field("Verification certificate (PEM)", pem, "The certificate whose CN is the code, signed by this CA."),
      field("Verification certificate file", file),
      h("div", { class: "actions" }, h("button", { type: "submit", text: "Verify", disabled: !state.code })),
    );
    const done = h("p", { class: "muted", text: "Done." });
    append(
      steps,
      h("li", { class: cls(0) }, h("h3", { text: "Get a verification code" }), isVerified ? done.cloneNode(true) : generate),
      h(
        "li",
        { class: cls(1) },
        h("h3", { text: "Sign the code with the CA" }),
        isVerified ? done.cloneNode(true) : codeBox || h("p", { class: "muted", text: "Generate a code first." }),
      ),
      h("li", { class: cls(2) }, h("h3", { text: "Upload the verification certificate" }), isVerified ? done.cloneNode(true) : verify),
      h(
        "li",
        { class: isVerified ? "done" : null },
        h("h3", { text: "Verified" }),
        isVerified ? h("p", {}, badge("verified", "ok"), " devices whose chains reach this CA can be admitted.") : h("p", { class: "muted", text: "Not yet." }),
      ),
    );
  };
  draw();
  return h("section", { class: "card", "aria-labelledby": "pop-title" }, h("h2", { id: "pop-title", text: "Proof of possession" }), steps, problem);
}

async function detail(view, name) {
  const ca = await api("GET", `/certificates/${encodeURIComponent(name)}`);
  const p = ca.properties;
  const problem = h("div");
  const remove = h("button", {
    type: "button",
    class: "danger",
    text: "Delete this CA",
    on: {
      click: async () => {
        if (!confirm(`Delete CA ${name}? Devices whose chains need it will be refused.`)) return;
        try {
          await api("DELETE", `/certificates/${encodeURIComponent(name)}`, { etag: ca.etag });
          notify(`CA ${name} deleted.`);
          go("cas");
        } catch (error) {
          append(problem, alert(error.stale ? STALE_MESSAGE : error.message));
        }
      },
    },
  });
  append(
    view,
    h("p", {}, link("← All CA certificates", "cas")),
    h("h1", { text: `CA ${name}` }),
    h(
      "section",
      { class: "card", "aria-label": "Certificate" },
      facts([
        ["Subject", p.subject],
        ["Issuer", p.issuer],
        ["Status", h("span", {}, verified(ca), " ", expiry(ca))],
        ["Valid from", when(p.notBefore)],
        ["Valid until", when(p.expiry)],
        ["SHA-256 thumbprint", h("code", { text: p.sha256Thumbprint || "—" })],
        ["Uploaded", when(p.created)],
      ]),
      h("div", { class: "actions" }, remove),
      problem,
    ),
    proofSteps(view, ca),
  );
}

export async function render(view, params) {
  if (params[0]) await detail(view, params[0]);
  else await list(view);
}
