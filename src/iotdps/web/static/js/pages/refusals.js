// Refusals, newest first, with the reason in words; filter by reason or registration id; and
// "explain" a pasted certificate bundle or an id + key: the answer a device never gets.
// Routes: GET /refusals?registrationId=&limit=, POST /explain.

import { api, can, RIGHTS } from "../api.js";
import { alert, append, badge, clear, field, h, select, table, when } from "../dom.js";
import { link } from "../nav.js";

const LIMIT = 500;

function explainForm() {
  const bundle = h("textarea", { class: "code", name: "explain-bundle", spellcheck: "false" });
  const rid = h("input", { type: "text", name: "explain-id", spellcheck: "false" });
  const key = h("input", { type: "password", name: "explain-key", autocomplete: "off" });
  const answer = h("div", { "aria-live": "polite" });
  return h(
    "form",
    {
      class: "card",
      "aria-labelledby": "explain-title",
      on: {
        submit: async (event) => {
          event.preventDefault();
          clear(answer);
          const body = bundle.value.trim()
            ? { certificates: bundle.value, ...(rid.value.trim() ? { registrationId: rid.value.trim() } : {}) }
            : { registrationId: rid.value.trim(), symmetricKey: key.value.trim() };
          try {
            const result = await api("POST", "/explain", { body });
            append(answer, h("h3", { text: "What iotdps decides, and why" }), h("pre", { class: "explanation", text: result.lines.join("\n") }));
          } catch (error) {
            append(answer, alert(error.message));
          }
        },
      },
    },
    h("h2", { id: "explain-title", text: "Explain a device" }),
    h("p", { class: "muted", text: "The precedence walk for a device, without registering it. Nothing is stored; the key is not kept." }),
    field("Certificate bundle (PEM, leaf first)", bundle, "What the device presents: its certificate and intermediates."),
    h("p", { class: "muted", text: "Or, for a symmetric-key device:" }),
    h("div", { class: "row" }, field("Registration id", rid), field("Device key", key, "The device's own (derived) key.")),
    h("div", { class: "actions" }, h("button", { type: "submit", text: "Explain" })),
    answer,
  );
}

export async function render(view) {
  const rid = h("input", { type: "search", name: "refusal-id", spellcheck: "false" });
  const reason = select([["", "Any reason"]], "", { name: "reason" });
  const box = h("div");
  const problem = h("div");
  let items = [];

  const draw = () => {
    const rows = items.filter((r) => !reason.value || r.reason === reason.value);
    clear(box);
    box.append(
      table(
        [
          { title: "When", cell: (r) => when(r.timestampUtc) },
          { title: "Registration id", cell: (r) => r.registrationId },
          { title: "Why, in words", cell: (r) => h("span", { class: "reason", text: r.message }) },
          { title: "Reason", cell: (r) => badge(r.reason, "bad") },
          { title: "Attestation", cell: (r) => r.attestationType || "—" },
          { title: "Enrollment", cell: (r) => r.enrollment || "—" },
        ],
        rows,
        `Refused registrations, newest first (${rows.length} of the latest ${items.length})`,
      ),
    );
  };
  const load = async () => {
    clear(problem);
    const query = new URLSearchParams({ limit: String(LIMIT) });
    if (rid.value.trim()) query.set("registrationId", rid.value.trim());
    try {
      items = await api("GET", `/refusals?${query}`);
    } catch (error) {
      append(problem, alert(error.message));
      items = [];
    }
    const reasons = [...new Set(items.map((r) => r.reason))].sort();
    const keep = reason.value;
    clear(reason);
    append(reason, h("option", { value: "", text: "Any reason" }), reasons.map((r) => h("option", { value: r, selected: r === keep, text: r })));
    draw();
  };
  reason.addEventListener("change", draw);

  append(
    view,
    h("h1", { text: "Refusals" }),
    h("p", { class: "muted" }, "A refused device only hears “not authorized”; the reason is kept here. Registered devices are under ", link("Registrations", "registrations"), "."),
    h(
      "form",
      {
        class: "row",
        role: "search",
        on: {
          submit: (event) => {
            event.preventDefault();
            load();
          },
        },
      },
      field("Registration id", rid),
      field("Reason", reason),
      h("button", { type: "submit", class: "secondary", text: "Filter" }),
      h("button", { type: "button", class: "secondary", text: "Refresh", on: { click: () => load() } }),
    ),
    problem,
    h("section", { class: "card", "aria-label": "Refusals" }, box),
    can(RIGHTS.enrollmentRead) ? explainForm() : null,
  );
  await load();
}
