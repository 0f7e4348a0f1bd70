// Registrations: search by id, group, hub and status; one device's story (its registration,
// the enrollment that admitted it and why, its identity on the hub, its recent refusals).
// Routes: POST /registrations/query and /registrations/{group}/query (paged),
// GET/DELETE /registrations/{id}, GET /enrollments/{id}, /enrollmentGroups/{id},
// GET /refusals?registrationId=, GET /devices/{id} (x-iotdps-hub).

import { api, can, page, RIGHTS, STALE_MESSAGE } from "../api.js";
import { alert, append, badge, clear, facts, field, h, notify, select, table, when } from "../dom.js";
import { go, link } from "../nav.js";

const PAGE_SIZE = 50;
const STATUSES = ["assigned", "assigning", "failed", "disabled", "unassigned"];

function groupOf(reg) {
  return (reg.x509 && reg.x509.enrollmentGroupId) || (reg.symmetricKey && reg.symmetricKey.enrollmentGroupId) || null;
}

function attestationOf(reg) {
  if (reg.x509) return "x509";
  if (reg.symmetricKey) return "symmetricKey";
  if (reg.tpm) return "tpm";
  return null;
}

// The certificate is revoked now (the record view's `revocation`, worked out when it is read).
function revokedText(reg) {
  const r = reg.revocation;
  if (!r || !r.revoked) return null;
  const what = r.certificate === "issued" ? "issued certificate" : "certificate";
  const by = r.by === "leaf" ? `its ${what}` : `its ${what} is under ${r.by.replace(/^ca:/, "CA ")}`;
  return `revoked: ${by} (${r.reason || "unspecified"}${r.revokedAt ? `, ${r.revokedAt}` : ""})`;
}

function statusBadge(status) {
  const kind = status === "assigned" ? "ok" : status === "assigning" ? "plain" : "bad";
  return badge(status || "—", kind);
}

async function renderList(view) {
  const state = { tokens: [null], index: 0, items: [], single: null };
  const id = h("input", { type: "search", name: "registration-id", spellcheck: "false" });
  const group = h("input", { type: "text", name: "group", spellcheck: "false" });
  const hub = h("input", { type: "text", name: "hub", spellcheck: "false" });
  const status = select([["", "Any"], ...STATUSES.map((s) => [s, s])], "", { name: "status" });
  const box = h("div");
  const pager = h("div", { class: "pager" });
  const problem = h("div");
  const columns = [
    { title: "Registration id", cell: (r) => link(r.registrationId, "registrations", r.registrationId) },
    { title: "Status", cell: (r) => (r.revocation && r.revocation.revoked ? h("span", {}, statusBadge(r.status), " ", badge("revoked", "bad")) : statusBadge(r.status)) },
    { title: "Hub", cell: (r) => r.assignedHub || "—" },
    { title: "Device id", cell: (r) => r.deviceId || "—" },
    { title: "Group", cell: (r) => (groupOf(r) ? link(groupOf(r), "groups", groupOf(r)) : "individual") },
    { title: "Last registered", cell: (r) => when(r.lastUpdatedDateTimeUtc) },
  ];
  const draw = () => {
    const wantedHub = hub.value.trim().toLowerCase();
    const rows = (state.single ? [state.single] : state.items).filter(
      (r) => (!status.value || r.status === status.value) && (!wantedHub || (r.assignedHub || "").toLowerCase() === wantedHub),
    );
    clear(box);
    const filtered = status.value || wantedHub ? " (hub and status filtered on this page)" : "";
    box.append(table(columns, rows, state.single ? "The registration with that id" : `Registrations, page ${state.index + 1}${filtered}`));
    clear(pager);
    if (!state.single) {
      append(
        pager,
        h("button", { type: "button", class: "secondary", text: "Previous page", disabled: state.index === 0, on: { click: () => load(state.index - 1) } }),
        h("span", { class: "muted", text: `Page ${state.index + 1}` }),
        h("button", { type: "button", class: "secondary", text: "Next page", disabled: !state.tokens[state.index + 1], on: { click: () => load(state.index + 1) } }),
      );
    }
  };
  const load = async (index) => {
    clear(problem);
    try {
      const groupId = group.value.trim();
      const path = groupId ? `/registrations/${encodeURIComponent(groupId)}/query` : "/registrations/query";
      const got = await page(path, PAGE_SIZE, state.tokens[index]);
      state.items = got.items;
      state.index = index;
      state.tokens[index + 1] = got.continuation;
      draw();
    } catch (error) {
      append(problem, alert(error.message));
    }
  };
  const search = async (event) => {
    event.preventDefault();
    clear(problem);
    state.single = null;
    const wanted = id.value.trim();
    if (wanted) {
      try {
        state.single = await api("GET", `/registrations/${encodeURIComponent(wanted)}`);
      } catch (error) {
        append(problem, alert(error.status === 404 ? `No registration ${wanted}.` : error.message, error.status === 404 ? "warn" : "bad"));
        state.single = null;
        state.items = [];
        draw();
        return;
      }
      draw();
      return;
    }
    state.tokens = [null];
    await load(0);
  };
  append(
    view,
    h("h1", { text: "Registrations" }),
    h(
      "form",
      { class: "card", role: "search", on: { submit: search } },
      h(
        "div",
        { class: "row" },
        field("Registration id", id, "Exact id."),
        field("Enrollment group", group),
        field("Hub", hub),
        field("Status", status),
        h("button", { type: "submit", text: "Search" }),
      ),
    ),
    problem,
    h("section", { class: "card", "aria-label": "Registrations" }, box, pager),
  );
  await load(0);
}

function why(reg, enrollment, group) {
  const lines = [];
  if (!group) {
    lines.push(`An individual enrollment for ${reg.registrationId} exists: it comes first, before any group.`);
  } else if (attestationOf(reg) === "x509") {
    const refs = enrollment && enrollment.attestation && enrollment.attestation.x509;
    const ca = refs && refs.caReferences && refs.caReferences.primary;
    lines.push(
      `No individual enrollment for ${reg.registrationId}. Its certificate chain reached ${ca ? `CA ${ca}` : "the group's signing certificate"}; ` +
        `group ${group} is the nearest group in that chain, so it decided.`,
    );
  } else {
    lines.push(`No individual enrollment for ${reg.registrationId}. The device signed with the key derived from group ${group}'s key.`);
  }
  if (enrollment && enrollment.provisioningStatus === "disabled") {
    lines.push(`The ${group ? "group" : "enrollment"} is disabled now: the device keeps its hub connection, but its next registration will be refused.`);
  }
  if (reg.status !== "assigned" && reg.errorMessage) lines.push(`The last attempt failed: ${reg.errorMessage}`);
  return h("ul", {}, lines.map((line) => h("li", { text: line })));
}

async function story(view, id) {
  const reg = await api("GET", `/registrations/${encodeURIComponent(id)}`);
  const group = groupOf(reg);
  const problem = h("div");
  let enrollment = null;
  let enrollmentNote = null;
  if (can(RIGHTS.enrollmentRead)) {
    try {
      enrollment = group
        ? await api("GET", `/enrollmentGroups/${encodeURIComponent(group)}`)
        : await api("GET", `/enrollments/${encodeURIComponent(id)}`);
    } catch (error) {
      enrollmentNote = error.status === 404 ? `The ${group ? `group ${group}` : "individual enrollment"} no longer exists.` : error.message;
    }
  } else {
    enrollmentNote = "This session cannot read enrollments.";
  }
  let identity = null;
  let identityNote = null;
  if (!reg.assignedHub || !reg.deviceId) {
    identityNote = "Not assigned to a hub.";
  } else if (!can(RIGHTS.registryRead)) {
    identityNote = "Add a hub policy (Add a credential) to see the device's identity on its hub.";
  } else {
    try {
      identity = await api("GET", `/devices/${encodeURIComponent(reg.deviceId)}`, { hub: reg.assignedHub });
    } catch (error) {
      identityNote = error.status === 404 ? `No identity ${reg.deviceId} on ${reg.assignedHub} (deleted, or the hub is served elsewhere).` : error.message;
    }
  }
  let refusals = [];
  try {
    refusals = await api("GET", `/refusals?registrationId=${encodeURIComponent(id)}&limit=5`);
  } catch {
    refusals = [];
  }

  const remove = can(RIGHTS.registrationWrite)
    ? h("button", {
        type: "button",
        class: "danger",
        text: "Delete this registration",
        on: {
          click: async () => {
            if (!confirm(`Delete the registration of ${id}? Its next registration will be an initial assignment.`)) return;
            try {
              await api("DELETE", `/registrations/${encodeURIComponent(id)}`, { etag: reg.etag });
              notify(`Registration ${id} deleted.`);
              go("registrations");
            } catch (error) {
              append(problem, alert(error.stale ? STALE_MESSAGE : error.message));
            }
          },
        },
      })
    : null;

  append(
    view,
    h("p", {}, link("← All registrations", "registrations")),
    h("h1", { text: `Device ${id}` }),
    problem,
    h(
      "section",
      { class: "card", "aria-labelledby": "reg-title" },
      h("h2", { id: "reg-title", text: "Registration" }),
      facts([
        ["Status", h("span", {}, statusBadge(reg.status), reg.substatus ? ` ${reg.substatus}` : "")],
        ["Assigned hub", reg.assignedHub],
        ["Device id", reg.deviceId],
        ["Attestation", attestationOf(reg)],
        ["First registered", when(reg.createdDateTimeUtc)],
        ["Last registered", when(reg.lastUpdatedDateTimeUtc)],
        reg.errorMessage ? ["Error", reg.errorMessage] : null,
        revokedText(reg) ? ["Revocation", badge(revokedText(reg), "bad")] : null,
      ]),
      remove ? h("div", { class: "actions" }, remove) : null,
    ),
    h(
      "section",
      { class: "card", "aria-labelledby": "enr-title" },
      h("h2", { id: "enr-title", text: "Enrollment, and why it matched" }),
      group ? h("p", {}, "Group ", link(group, "groups", group)) : h("p", {}, "Individual enrollment ", link(id, "enrollments", id)),
      enrollment ? facts([["Status", enrollment.provisioningStatus === "disabled" ? badge("disabled", "bad") : badge("enabled", "ok")], ["Allocation", enrollment.allocationPolicy || "service default"]]) : null,
      enrollmentNote ? h("p", { class: "muted", text: enrollmentNote }) : null,
      why(reg, enrollment, group),
    ),
    h(
      "section",
      { class: "card", "aria-labelledby": "hub-title" },
      h("h2", { id: "hub-title", text: "Identity on the hub" }),
      identity
        ? [
            facts([
              ["Device", link(identity.deviceId, "devices", reg.assignedHub, identity.deviceId)],
              ["Status", identity.status === "enabled" ? badge("enabled", "ok") : badge(identity.status, "bad")],
              ["Connection", identity.connectionState === "Connected" ? badge("connected", "ok") : badge("disconnected", "plain")],
              ["Authentication", identity.authentication ? identity.authentication.type : "—"],
            ]),
          ]
        : h("p", { class: "muted", text: identityNote }),
    ),
    h(
      "section",
      { class: "card", "aria-labelledby": "ref-title" },
      h("h2", { id: "ref-title", text: "Recent refusals of this id" }),
      refusals.length
        ? h("ul", {}, refusals.map((r) => h("li", {}, h("span", { class: "muted", text: `${when(r.timestampUtc)}: ` }), r.message)))
        : h("p", { class: "muted", text: "None." }),
    ),
  );
}

export async function render(view, params) {
  if (params[0]) await story(view, params[0]);
  else await renderList(view);
}
