// Individual enrollments and enrollment groups share one list and one editor; `kind` says
// what differs. Routes: POST {base}/query (paged), GET/PUT/DELETE {base}/{id} (etags),
// POST {base}/{id}/attestationmechanism (the keys; EnrollmentWrite).

import { api, can, page, RIGHTS, STALE_MESSAGE } from "../api.js";
import { alert, append, badge, checkbox, clear, facts, field, h, newId, notify, select, table, when } from "../dom.js";
import { go, href, link } from "../nav.js";

export const KINDS = {
  enrollments: {
    page: "enrollments",
    base: "/enrollments",
    idField: "registrationId",
    noun: "enrollment",
    title: "Enrollments",
    group: false,
  },
  groups: {
    page: "groups",
    base: "/enrollmentGroups",
    idField: "enrollmentGroupId",
    noun: "enrollment group",
    title: "Enrollment groups",
    group: true,
  },
};

const PAGE_SIZE = 20;
const SEARCH_PAGES = 10;

function attestationText(doc) {
  const a = doc.attestation || {};
  if (a.type === "x509") {
    const x = a.x509 || {};
    if (x.caReferences && x.caReferences.primary) return `X.509, CA ${x.caReferences.primary}`;
    if (x.signingCertificates) return "X.509, signing certificate";
    return "X.509, client certificate";
  }
  if (a.type === "symmetricKey") return "symmetric key";
  return a.type || "—";
}

function statusBadge(doc) {
  return doc.provisioningStatus === "disabled" ? badge("disabled", "bad") : badge("enabled", "ok");
}

function hubsText(doc) {
  const policy = doc.allocationPolicy || "service default";
  const hubs = (doc.iotHubs || []).join(", ");
  return hubs ? `${policy}: ${hubs}` : policy;
}

// --------------------------------------------------------------------------- list

export async function renderList(view, kind) {
  const state = { tokens: [null], index: 0, items: [], filter: "all", found: null };
  const tableBox = h("div");
  const pager = h("div", { class: "pager" });
  const problem = h("div");
  const search = h("input", { type: "search", name: "search", spellcheck: "false" });
  const statusFilter = select(
    [
      ["all", "All"],
      ["enabled", "Enabled"],
      ["disabled", "Disabled"],
    ],
    "all",
    { name: "status-filter" },
  );

  const columns = [
    { title: "Id", cell: (d) => link(d[kind.idField], kind.page, d[kind.idField]) },
    { title: "Attestation", cell: attestationText },
    { title: "Status", cell: statusBadge },
    { title: "Allocation", cell: hubsText },
    kind.group ? null : { title: "Device id", cell: (d) => d.deviceId || d.registrationId },
    { title: "Updated", cell: (d) => when(d.lastUpdatedDateTimeUtc) },
  ].filter(Boolean);

  const draw = () => {
    const shown = (state.found || state.items).filter(
      (d) => state.filter === "all" || (d.provisioningStatus || "enabled") === state.filter,
    );
    clear(tableBox);
    const caption = state.found
      ? `Search results for “${search.value.trim()}”`
      : `${kind.title}, page ${state.index + 1}`;
    tableBox.append(table(columns, shown, caption));
    clear(pager);
    if (!state.found) {
      append(
        pager,
        h("button", {
          type: "button",
          class: "secondary",
          text: "Previous page",
          disabled: state.index === 0,
          on: { click: () => load(state.index - 1) },
        }),
        h("span", { class: "muted", text: `Page ${state.index + 1}` }),
        h("button", {
          type: "button",
          class: "secondary",
          text: "Next page",
          disabled: !state.tokens[state.index + 1],
          on: { click: () => load(state.index + 1) },
        }),
      );
    } else {
      append(pager, h("button", { type: "button", class: "secondary", text: "Back to the list", on: { click: () => reset() } }));
    }
  };

  const load = async (index) => {
    clear(problem);
    try {
      const got = await page(`${kind.base}/query`, PAGE_SIZE, state.tokens[index]);
      state.items = got.items;
      state.index = index;
      state.tokens[index + 1] = got.continuation;
      state.found = null;
      draw();
    } catch (error) {
      append(problem, alert(error.message));
    }
  };

  const reset = () => {
    search.value = "";
    state.found = null;
    draw();
  };

  // Search: the exact id first (one GET), else ids containing the text in the first pages.
  const find = async (text) => {
    clear(problem);
    try {
      const exact = await api("GET", `${kind.base}/${encodeURIComponent(text)}`);
      state.found = [exact];
    } catch (error) {
      if (error.status !== 404 && error.status !== 400) throw error;
      const needle = text.toLowerCase();
      const found = [];
      let token = null;
      for (let n = 0; n < SEARCH_PAGES; n += 1) {
        const got = await page(`${kind.base}/query`, 100, token);
        found.push(...got.items.filter((d) => String(d[kind.idField]).toLowerCase().includes(needle)));
        token = got.continuation;
        if (!token) break;
      }
      state.found = found;
    }
    draw();
  };

  statusFilter.addEventListener("change", () => {
    state.filter = statusFilter.value;
    draw();
  });

  append(
    view,
    h("h1", { text: kind.title }),
    h(
      "div",
      { class: "row" },
      h(
        "form",
        {
          class: "row",
          role: "search",
          on: {
            submit: (event) => {
              event.preventDefault();
              const text = search.value.trim();
              if (text) find(text).catch((error) => append(problem, alert(error.message)));
              else reset();
            },
          },
        },
        field(`Find ${kind.noun} by id`, search, "The exact id, or part of it."),
        h("button", { type: "submit", class: "secondary", text: "Search" }),
      ),
      field("Status", statusFilter),
      can(RIGHTS.enrollmentWrite)
        ? h("a", { class: "button", href: href(kind.page, "new"), text: `New ${kind.noun}` })
        : null,
    ),
    problem,
    h("section", { class: "card", "aria-label": kind.title }, tableBox, pager),
  );
  await load(0);
}

// --------------------------------------------------------------------------- twin editor

/** A JSON editor for the initial twin: {tags, properties: {desired}}, checked as you type. */
export function twinEditor(initial) {
  const text = h("textarea", { class: "code", name: "initial-twin", spellcheck: "false", rows: "8" });
  text.value = JSON.stringify(initial || { tags: {}, properties: { desired: {} } }, null, 2);
  const errorId = newId("twin-error");
  const error = h("div", { class: "field-error", id: errorId, "aria-live": "polite" });
  text.setAttribute("aria-describedby", errorId);
  const check = () => {
    let message = "";
    let value = null;
    try {
      value = text.value.trim() ? JSON.parse(text.value) : {};
      if (value === null || typeof value !== "object" || Array.isArray(value)) {
        message = "The initial twin must be a JSON object: {\"tags\": {...}, \"properties\": {\"desired\": {...}}}.";
      } else {
        const extra = Object.keys(value).filter((k) => k !== "tags" && k !== "properties");
        if (extra.length) message = `Unknown field(s): ${extra.join(", ")}. Only tags and properties.desired are kept.`;
        else if (value.properties !== undefined && (typeof value.properties !== "object" || value.properties === null || Array.isArray(value.properties))) {
          message = "properties must be an object with desired inside.";
        }
      }
    } catch (exc) {
      message = `Not valid JSON: ${exc.message}`;
    }
    error.textContent = message;
    text.setAttribute("aria-invalid", message ? "true" : "false");
    return message ? null : value;
  };
  text.addEventListener("input", check);
  return {
    el: h("div", {}, field("Initial twin (JSON)", text, "Tags and desired properties the device's twin starts with."), error),
    value: check,
    input: text,
  };
}

// --------------------------------------------------------------------------- editor

async function linkedHubs() {
  if (!can(RIGHTS.registrationRead)) return null;
  try {
    return (await api("GET", "/status")).linkedHubs.map((hub) => hub.hostName);
  } catch {
    return null;
  }
}

async function caNames() {
  if (!can(RIGHTS.serviceConfig)) return null;
  try {
    return ((await api("GET", "/certificates")).value || []).map((ca) => ca.name);
  } catch {
    return null;
  }
}

function attestationFields(kind, creating, doc, cas) {
  if (!creating) {
    return { el: h("p", {}, "Attestation: ", h("strong", { text: attestationText(doc) })), read: () => doc.attestation };
  }
  const options = kind.group
    ? [
        ["symmetricKey", "Symmetric key (devices use keys derived from the group key)"],
        ["caReference", "X.509, an uploaded CA"],
        ["signing", "X.509, a signing certificate"],
      ]
    : [
        ["symmetricKey", "Symmetric key (generated)"],
        ["x509", "X.509, the device's own certificate"],
      ];
  const type = select(options, "symmetricKey", { name: "attestation-type" });
  const ca = cas && cas.length
    ? select(cas.map((n) => [n, n]), cas[0], { name: "ca-reference" })
    : h("input", { type: "text", name: "ca-reference", spellcheck: "false" });
  const pem = h("textarea", { class: "code", name: "certificate-pem", spellcheck: "false" });
  const caField = field("CA", ca, "The uploaded (and verified) CA whose devices this group admits.");
  const pemField = field("Certificate (PEM)", pem, kind.group ? "The group's signing certificate." : "The device's certificate (the leaf only).");
  const sync = () => {
    caField.hidden = type.value !== "caReference";
    pemField.hidden = !(type.value === "signing" || type.value === "x509");
  };
  type.addEventListener("change", sync);
  sync();
  const read = () => {
    if (type.value === "symmetricKey") return { type: "symmetricKey", symmetricKey: {} };
    if (type.value === "caReference") return { type: "x509", x509: { caReferences: { primary: ca.value.trim() } } };
    const slot = { primary: { certificate: pem.value } };
    return { type: "x509", x509: kind.group ? { signingCertificates: slot } : { clientCertificates: slot } };
  };
  return { el: h("fieldset", {}, h("legend", { text: "Attestation" }), field("Mechanism", type), caField, pemField), read };
}

function allocationFields(doc, hubs) {
  const policy = select(
    [
      ["", "The service's default"],
      ["hashed", "hashed (evenly weighted)"],
      ["geoLatency", "geoLatency"],
      ["static", "static (the one hub below)"],
      ["custom", "custom (a webhook decides)"],
    ],
    doc.allocationPolicy || "",
    { name: "allocation-policy" },
  );
  const chosen = new Set(doc.iotHubs || []);
  let readHubs;
  let hubsEl;
  if (hubs) {
    const boxes = hubs.map((name) => checkbox(name, chosen.has(name), { name: "iot-hub", value: name }));
    hubsEl = h("fieldset", {}, h("legend", { text: "Hubs to choose from (none: every linked hub)" }), boxes.map((b) => b.el));
    readHubs = () => boxes.filter((b) => b.input.checked).map((b) => b.input.value);
  } else {
    const input = h("input", { type: "text", name: "iot-hubs", value: [...chosen].join(", "), spellcheck: "false" });
    hubsEl = field("Hubs", input, "Host names, comma separated; empty: every linked hub.");
    readHubs = () => input.value.split(",").map((s) => s.trim()).filter(Boolean);
  }
  const custom = doc.customAllocationDefinition || {};
  const webhook = h("input", { type: "text", name: "webhook-url", value: custom.webhookUrl || "", spellcheck: "false" });
  const apiVersion = h("input", { type: "text", name: "webhook-api-version", value: custom.apiVersion || "2021-10-01" });
  const customBox = h("div", {}, field("Webhook URL", webhook), field("Webhook API version", apiVersion));
  const sync = () => {
    customBox.hidden = policy.value !== "custom";
  };
  policy.addEventListener("change", sync);
  sync();
  const reprovision = doc.reprovisionPolicy || { updateHubAssignment: true, migrateDeviceData: true };
  const update = checkbox("Move the device when its allocation changes (updateHubAssignment)", reprovision.updateHubAssignment !== false, { name: "update-hub-assignment" });
  const migrate = checkbox("Carry the twin over when it moves (migrateDeviceData)", reprovision.migrateDeviceData !== false, { name: "migrate-device-data" });
  return {
    el: [
      h("fieldset", {}, h("legend", { text: "Allocation" }), field("Allocation policy", policy), hubsEl, customBox),
      h("fieldset", {}, h("legend", { text: "Reprovisioning" }), update.el, migrate.el),
    ],
    read: (out) => {
      if (policy.value) out.allocationPolicy = policy.value;
      else delete out.allocationPolicy;
      out.iotHubs = readHubs();
      if (policy.value === "custom") out.customAllocationDefinition = { webhookUrl: webhook.value.trim(), apiVersion: apiVersion.value.trim() };
      else delete out.customAllocationDefinition;
      out.reprovisionPolicy = { updateHubAssignment: update.input.checked, migrateDeviceData: migrate.input.checked };
    },
  };
}

function keysBox(kind, id) {
  const box = h("div", { "aria-live": "polite" });
  const show = h("button", {
    type: "button",
    class: "secondary",
    text: "Show keys",
    on: {
      click: async () => {
        clear(box);
        try {
          const mechanism = await api("POST", `${kind.base}/${encodeURIComponent(id)}/attestationmechanism`);
          const keys = mechanism.symmetricKey || {};
          append(
            box,
            facts([
              ["Primary key", h("code", { class: "secret", text: keys.primaryKey || "—" })],
              ["Secondary key", h("code", { class: "secret", text: keys.secondaryKey || "—" })],
            ]),
            kind.group ? h("p", { class: "muted", text: "A device's key is base64(HMAC-SHA256(group key, registration id)); give devices only their derived key." }) : null,
            h("button", { type: "button", class: "link", text: "Hide keys", on: { click: () => clear(box) } }),
          );
        } catch (error) {
          append(box, alert(error.message));
        }
      },
    },
  });
  return h("div", {}, show, box);
}

export async function renderDetail(view, kind, id) {
  const creating = id === "new";
  const writable = can(RIGHTS.enrollmentWrite);
  let doc = creating
    ? { provisioningStatus: "enabled", reprovisionPolicy: { updateHubAssignment: true, migrateDeviceData: true } }
    : await api("GET", `${kind.base}/${encodeURIComponent(id)}`);
  const [hubs, cas] = await Promise.all([linkedHubs(), creating && kind.group ? caNames() : null]);
  const problem = h("div", { "aria-live": "assertive" });

  const idInput = h("input", { type: "text", name: "id", spellcheck: "false", required: true });
  const deviceId = h("input", { type: "text", name: "device-id", value: doc.deviceId || "", spellcheck: "false" });
  const enabled = checkbox("Enabled: devices may register", doc.provisioningStatus !== "disabled", { name: "enabled" });
  const edge = checkbox("IoT Edge device", Boolean(doc.capabilities && doc.capabilities.iotEdge), { name: "iot-edge" });
  const attestation = attestationFields(kind, creating, doc, cas);
  const allocation = allocationFields(doc, hubs);
  const twin = twinEditor(doc.initialTwin);
  const save = h("button", { type: "submit", text: creating ? `Create ${kind.noun}` : "Save changes" });

  const stale = () => {
    clear(problem);
    const reload = h("button", {
      type: "button",
      class: "secondary",
      text: "Reload",
      on: { click: () => window.dispatchEvent(new HashChangeEvent("hashchange")) },
    });
    append(problem, alert(STALE_MESSAGE, "warn"), reload);
    reload.focus(); // brings the message into view, next to what to do about it
  };

  const put = async (body, etag) => {
    const saved = await api("PUT", `${kind.base}/${encodeURIComponent(body[kind.idField])}`, { body, etag });
    return saved;
  };

  const submit = async (event) => {
    event.preventDefault();
    clear(problem);
    const initialTwin = twin.value();
    if (initialTwin === null) {
      twin.input.focus();
      append(problem, alert("Fix the initial twin first: it is not a valid JSON object."));
      return;
    }
    const body = { ...doc };
    delete body.registrationState;
    const key = creating ? idInput.value.trim() : id;
    body[kind.idField] = key;
    body.attestation = attestation.read();
    if (!kind.group) {
      if (deviceId.value.trim()) body.deviceId = deviceId.value.trim();
      else delete body.deviceId;
    }
    body.provisioningStatus = enabled.input.checked ? "enabled" : "disabled";
    body.capabilities = { ...(doc.capabilities || {}), iotEdge: edge.input.checked };
    allocation.read(body);
    body.initialTwin = initialTwin;
    try {
      if (creating) {
        const exists = await api("GET", `${kind.base}/${encodeURIComponent(key)}`).then(
          () => true,
          (error) => (error.status === 404 ? false : Promise.reject(error)),
        );
        if (exists) {
          append(problem, alert(`An ${kind.noun} ${key} already exists; open it to change it.`));
          return;
        }
      }
      doc = await put(body, creating ? undefined : doc.etag);
      notify(creating ? `${kind.noun} ${key} created.` : `${kind.noun} ${key} saved.`);
      go(kind.page, key);
      if (!creating) window.dispatchEvent(new HashChangeEvent("hashchange"));
    } catch (error) {
      if (error.stale) stale();
      else append(problem, alert(error.message));
    }
  };

  const quick = [];
  if (!creating && writable) {
    const toggle = doc.provisioningStatus === "disabled" ? "enabled" : "disabled";
    quick.push(
      h("button", {
        type: "button",
        class: toggle === "disabled" ? "danger" : "secondary",
        text: toggle === "disabled" ? `Disable this ${kind.noun}` : `Enable this ${kind.noun}`,
        on: {
          click: async () => {
            clear(problem);
            const body = { ...doc, provisioningStatus: toggle };
            delete body.registrationState;
            try {
              doc = await put(body, doc.etag);
              notify(`${kind.noun} ${id} ${toggle}.`);
              window.dispatchEvent(new HashChangeEvent("hashchange"));
            } catch (error) {
              if (error.stale) stale();
              else append(problem, alert(error.message));
            }
          },
        },
      }),
      h("button", {
        type: "button",
        class: "danger",
        text: `Delete this ${kind.noun}`,
        on: {
          click: async () => {
            if (!confirm(`Delete ${kind.noun} ${id}? Its devices will be refused at their next registration.`)) return;
            clear(problem);
            try {
              await api("DELETE", `${kind.base}/${encodeURIComponent(id)}`, { etag: doc.etag });
              notify(`${kind.noun} ${id} deleted.`);
              go(kind.page);
            } catch (error) {
              if (error.stale) stale();
              else append(problem, alert(error.message));
            }
          },
        },
      }),
    );
  }
  const symmetric = doc.attestation && doc.attestation.type === "symmetricKey";

  append(
    view,
    h("p", {}, link(`← All ${kind.title.toLowerCase()}`, kind.page)),
    h("h1", { text: creating ? `New ${kind.noun}` : `${kind.noun[0].toUpperCase()}${kind.noun.slice(1)} ${id}` }),
    creating
      ? null
      : h(
          "section",
          { class: "card", "aria-label": "Summary" },
          facts([
            ["Status", statusBadge(doc)],
            ["Attestation", attestationText(doc)],
            ["Allocation", hubsText(doc)],
            ["Created", when(doc.createdDateTimeUtc)],
            ["Updated", when(doc.lastUpdatedDateTimeUtc)],
            ["Etag", h("code", { text: doc.etag || "—" })],
            doc.registrationState ? ["Registration", link(`${doc.registrationState.status} on ${doc.registrationState.assignedHub || "—"}`, "registrations", id)] : null,
          ]),
          quick.length ? h("div", { class: "actions" }, quick) : null,
          symmetric && writable ? h("div", { class: "actions" }, keysBox(kind, id)) : null,
          symmetric && !writable ? h("p", { class: "muted", text: "Keys are shown only to a policy with EnrollmentWrite." }) : null,
        ),
    problem,
    h(
      "form",
      { class: "card", "aria-label": creating ? `New ${kind.noun}` : `Edit ${kind.noun}`, on: { submit } },
      h(
        "fieldset",
        { disabled: !writable },
        h("legend", { text: writable ? "Settings" : "Settings (read only: this session cannot write enrollments)" }),
        creating ? field(kind.group ? "Group id" : "Registration id", idInput, "Letters, digits and - . _ : (at most 128).") : null,
        attestation.el,
        kind.group ? null : field("Device id", deviceId, "Empty: the registration id."),
        enabled.el,
        edge.el,
        allocation.el,
        twin.el,
        h("div", { class: "actions" }, save),
      ),
    ),
  );
}
