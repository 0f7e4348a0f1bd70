// Overview: GET /status (ID scope, endpoints, linked hubs, counts, activity per minute) and,
// with hub rights, each served hub's GET /statistics/devices and /statistics/service.

import { api, can, RIGHTS } from "../api.js";
import { lineChart } from "../chart.js";
import { alert, append, badge, clear, facts, h, table } from "../dom.js";
import { link } from "../nav.js";

async function hubNumbers(hubs) {
  const numbers = new Map();
  await Promise.all(
    hubs
      .filter((hub) => hub.served)
      .map(async (hub) => {
        const entry = {};
        try {
          if (can(RIGHTS.registryRead)) entry.devices = await api("GET", "/statistics/devices", { hub: hub.hostName });
          if (can(RIGHTS.serviceConnect)) entry.service = await api("GET", "/statistics/service", { hub: hub.hostName });
        } catch (error) {
          entry.error = error.message;
        }
        numbers.set(hub.hostName, entry);
      }),
  );
  return numbers;
}

function stat(value, label, target) {
  const number = h("div", { class: "stat", text: value ?? "—" });
  return h("div", { class: "card" }, number, h("div", { class: "stat-label" }, target ? link(label, target) : label));
}

async function draw(view) {
  const status = await api("GET", "/status");
  const numbers = await hubNumbers(status.linkedHubs);
  const registrations = status.registrations || {};
  const total = Object.values(registrations).reduce((s, n) => s + n, 0);
  let connected = null;
  if (can(RIGHTS.serviceConnect)) {
    connected = 0;
    for (const entry of numbers.values()) connected += entry.service ? entry.service.connectedDeviceCount : 0;
  }
  const start = new Date(status.perMinute.start);
  clear(view);
  append(
    view,
    h("h1", { text: "Overview" }),
    h(
      "div",
      { class: "grid" },
      stat(status.enrollments, "individual enrollments", "enrollments"),
      stat(status.enrollmentGroups, "enrollment groups", "groups"),
      stat(total, `registrations (${registrations.assigned || 0} assigned)`, "registrations"),
      stat(connected, can(RIGHTS.serviceConnect) ? "devices connected now" : "connected devices (needs a hub policy)"),
    ),
    h(
      "section",
      { class: "card", "aria-labelledby": "activity-title" },
      h("h2", { id: "activity-title", text: "Registrations and refusals per minute, last hour" }),
      lineChart({
        title: "Registrations and refusals per minute",
        start,
        a: { label: "Assignments", values: status.perMinute.assignments },
        b: { label: "Refusals", values: status.perMinute.refusals },
      }),
    ),
    h(
      "div",
      { class: "split" },
      h(
        "section",
        { class: "card", "aria-labelledby": "service-title" },
        h("h2", { id: "service-title", text: "Service" }),
        facts([
          ["ID scope", h("code", { text: status.idScope || "—" })],
          ["Devices connect to", h("code", { text: status.deviceProvisioningHostName || "—" })],
          ["Endpoints", h("ul", {}, status.endpoints.map((e) => h("li", {}, h("code", { text: e }))))],
          [
            "Registrations by status",
            Object.keys(registrations).length
              ? Object.entries(registrations)
                  .map(([k, v]) => `${k}: ${v}`)
                  .join(", ")
              : "none yet",
          ],
        ]),
      ),
      h(
        "section",
        { class: "card", "aria-labelledby": "hubs-title" },
        h("h2", { id: "hubs-title", text: "Linked hubs" }),
        table(
          [
            { title: "Hub", cell: (hub) => (can(RIGHTS.registryRead) && hub.served ? link(hub.hostName, "devices", hub.hostName) : hub.hostName) },
            { title: "Weight", num: true, cell: (hub) => String(hub.allocationWeight ?? 1) },
            { title: "Served here", cell: (hub) => (hub.served ? badge("served", "ok") : badge("not served", "warn")) },
            {
              title: "Devices",
              num: true,
              cell: (hub) => {
                const entry = numbers.get(hub.hostName);
                return entry && entry.devices ? String(entry.devices.totalDeviceCount) : "—";
              },
            },
            {
              title: "Connected",
              num: true,
              cell: (hub) => {
                const entry = numbers.get(hub.hostName);
                return entry && entry.service ? String(entry.service.connectedDeviceCount) : "—";
              },
            },
          ],
          status.linkedHubs,
          "Hubs devices are assigned to; a hub not served here runs elsewhere.",
        ),
      ),
    ),
  );
}

export async function render(view) {
  await draw(view);
  const timer = setInterval(() => {
    // Not while the operator is on a link or button inside: redrawing would drop their focus.
    if (view.contains(document.activeElement)) return;
    draw(view).catch((error) => {
      view.prepend(alert(`Refresh failed: ${error.message}`, "warn"));
    });
  }, 15000);
  return () => clearInterval(timer);
}
