// Hubs and devices: the device list with connection state; one device's twin (view, edit
// desired), a direct method, a cloud-to-device message and its telemetry, live.
// Routes (hub service API, the hub named by x-iotdps-hub): GET /devices, GET/PUT /devices/{id},
// GET/PUT /twins/{id}, POST /twins/{id}/methods, POST /devices/{id}/messages/deviceBound,
// GET /devices/{id}/messages/events and .../events/stream (server-sent events),
// GET /statistics/devices and /statistics/service. Hubs come from GET /status.

import { api, can, RIGHTS, STALE_MESSAGE, stream } from "../api.js";
import { alert, append, badge, clear, facts, field, h, newId, notify, select, table, when } from "../dom.js";
import { go, link } from "../nav.js";

const REMEMBERED = "iotdps-console-hub";

async function servedHubs() {
  if (!can(RIGHTS.registrationRead)) return null;
  try {
    return (await api("GET", "/status")).linkedHubs.filter((hub) => hub.served).map((hub) => hub.hostName);
  } catch {
    return null;
  }
}

function connection(state) {
  return state === "Connected" ? badge("connected", "ok") : badge("disconnected", "plain");
}

function jsonBlock(value) {
  return h("pre", { text: JSON.stringify(value, null, 2) });
}

/** A JSON textarea checked as you type; `value()` is the parsed object or null when invalid. */
function jsonInput(label, name, initial, hint, { object = true } = {}) {
  const input = h("textarea", { class: "code", name, spellcheck: "false", rows: "6" });
  input.value = initial;
  const errorId = newId("json-error");
  const error = h("div", { class: "field-error", id: errorId, "aria-live": "polite" });
  input.setAttribute("aria-describedby", errorId);
  const value = () => {
    let message = "";
    let parsed;
    try {
      parsed = input.value.trim() ? JSON.parse(input.value) : object ? {} : null;
      if (object && (parsed === null || typeof parsed !== "object" || Array.isArray(parsed))) message = "This must be a JSON object.";
    } catch (exc) {
      message = `Not valid JSON: ${exc.message}`;
    }
    error.textContent = message;
    input.setAttribute("aria-invalid", message ? "true" : "false");
    return message ? undefined : parsed;
  };
  input.addEventListener("input", value);
  return { el: h("div", {}, field(label, input, hint), error), value, input };
}

async function hubChooser(view, hubs, current) {
  if (hubs && hubs.length) {
    const chooser = select(hubs.map((name) => [name, name]), current, { name: "hub" });
    chooser.addEventListener("change", () => go("devices", chooser.value));
    return field("Hub", chooser);
  }
  const input = h("input", { type: "text", name: "hub", value: current || "", spellcheck: "false" });
  return h(
    "form",
    {
      class: "row",
      on: {
        submit: (event) => {
          event.preventDefault();
          if (input.value.trim()) go("devices", input.value.trim());
        },
      },
    },
    field("Hub host name", input, "This session cannot list the linked hubs; type the hub's host name."),
    h("button", { type: "submit", class: "secondary", text: "Open" }),
  );
}

async function deviceList(view, hub, hubs) {
  const [devices, registry, service] = await Promise.all([
    api("GET", "/devices?top=1000", { hub }),
    api("GET", "/statistics/devices", { hub }).catch(() => null),
    can(RIGHTS.serviceConnect) ? api("GET", "/statistics/service", { hub }).catch(() => null) : null,
  ]);
  const filter = h("input", { type: "search", name: "device-filter", spellcheck: "false" });
  const box = h("div");
  const draw = () => {
    const needle = filter.value.trim().toLowerCase();
    clear(box);
    box.append(
      table(
        [
          { title: "Device id", cell: (d) => link(d.deviceId, "devices", hub, d.deviceId) },
          { title: "Connection", cell: (d) => connection(d.connectionState) },
          { title: "Status", cell: (d) => (d.status === "enabled" ? badge("enabled", "ok") : badge(d.status, "bad")) },
          { title: "Authentication", cell: (d) => (d.authentication ? d.authentication.type : "—") },
          { title: "Status changed", cell: (d) => when(d.statusUpdatedTime) },
        ],
        devices.filter((d) => !needle || d.deviceId.toLowerCase().includes(needle)),
        `Devices of ${hub}`,
      ),
    );
  };
  filter.addEventListener("input", draw);
  draw();
  append(
    view,
    h("h1", { text: "Devices" }),
    h("div", { class: "row" }, await hubChooser(view, hubs, hub), field("Filter by device id", filter)),
    h(
      "div",
      { class: "grid" },
      h("div", { class: "card" }, h("div", { class: "stat", text: registry ? registry.totalDeviceCount : devices.length }), h("div", { class: "stat-label", text: "devices" })),
      h("div", { class: "card" }, h("div", { class: "stat", text: registry ? registry.enabledDeviceCount : "—" }), h("div", { class: "stat-label", text: "enabled" })),
      h("div", { class: "card" }, h("div", { class: "stat", text: service ? service.connectedDeviceCount : "—" }), h("div", { class: "stat-label", text: "connected now" })),
    ),
    h("section", { class: "card", "aria-label": "Devices" }, box),
  );
}

function twinSection(hub, id, twin, reload) {
  const problem = h("div", { "aria-live": "assertive" });
  const desired = { ...twin.properties.desired };
  delete desired.$version;
  const reported = { ...twin.properties.reported };
  delete reported.$version;
  const editable = can(RIGHTS.serviceConnect);
  const editor = jsonInput("Desired properties (JSON)", "desired", JSON.stringify(desired, null, 2), "Replaces the desired properties; the device gets the change when connected.");
  const form = h(
    "form",
    {
      on: {
        submit: async (event) => {
          event.preventDefault();
          clear(problem);
          const value = editor.value();
          if (value === undefined) {
            editor.input.focus();
            return;
          }
          try {
            await api("PUT", `/twins/${encodeURIComponent(id)}`, {
              hub,
              etag: twin.etag,
              body: { tags: twin.tags || {}, properties: { desired: value } },
            });
            notify("Desired properties saved.");
            reload();
          } catch (error) {
            if (error.stale) {
              append(problem, alert(STALE_MESSAGE, "warn"), h("button", { type: "button", class: "secondary", text: "Reload", on: { click: reload } }));
            } else {
              append(problem, alert(error.message));
            }
          }
        },
      },
    },
    editor.el,
    h("div", { class: "actions" }, h("button", { type: "submit", text: "Save desired properties" })),
  );
  return h(
    "section",
    { class: "card", "aria-labelledby": "twin-title" },
    h("h2", { id: "twin-title", text: "Twin" }),
    h(
      "div",
      { class: "split" },
      h("div", {}, h("h3", { text: `Desired (version ${twin.properties.desired.$version})` }), jsonBlock(desired)),
      h("div", {}, h("h3", { text: `Reported (version ${twin.properties.reported.$version})` }), jsonBlock(reported)),
    ),
    h("h3", { text: "Tags" }),
    jsonBlock(twin.tags || {}),
    editable ? form : h("p", { class: "muted", text: "Editing the twin needs ServiceConnect." }),
    problem,
  );
}

function methodSection(hub, id) {
  const name = h("input", { type: "text", name: "method-name", spellcheck: "false", required: true });
  const payload = jsonInput("Payload (JSON)", "method-payload", "{}", "Any JSON value.", { object: false });
  const timeout = h("input", { type: "number", name: "method-timeout", min: "1", max: "300", value: "30" });
  const answer = h("div", { "aria-live": "polite" });
  return h(
    "form",
    {
      class: "card",
      "aria-labelledby": "method-title",
      on: {
        submit: async (event) => {
          event.preventDefault();
          clear(answer);
          const body = payload.value();
          if (body === undefined) return;
          try {
            const result = await api("POST", `/twins/${encodeURIComponent(id)}/methods`, {
              hub,
              body: { methodName: name.value.trim(), payload: body, responseTimeoutInSeconds: Number(timeout.value) || 30, connectTimeoutInSeconds: 0 },
            });
            append(answer, h("p", {}, "The device answered with status ", h("strong", { text: String(result.status) })), jsonBlock(result.payload));
          } catch (error) {
            append(answer, alert(error.message));
          }
        },
      },
    },
    h("h2", { id: "method-title", text: "Invoke a direct method" }),
    h("div", { class: "row" }, field("Method name", name), field("Answer within (seconds)", timeout)),
    payload.el,
    h("div", { class: "actions" }, h("button", { type: "submit", text: "Invoke" })),
    answer,
  );
}

function c2dSection(hub, id) {
  const body = h("textarea", { name: "c2d-body", rows: "3" });
  const props = h("textarea", { name: "c2d-properties", rows: "2", spellcheck: "false" });
  const answer = h("div", { "aria-live": "polite" });
  return h(
    "form",
    {
      class: "card",
      "aria-labelledby": "c2d-title",
      on: {
        submit: async (event) => {
          event.preventDefault();
          clear(answer);
          const properties = {};
          for (const line of props.value.split("\n").map((l) => l.trim()).filter(Boolean)) {
            const cut = line.indexOf("=");
            if (cut <= 0) {
              append(answer, alert(`Properties are name=value lines; “${line}” is not.`));
              return;
            }
            properties[line.slice(0, cut).trim()] = line.slice(cut + 1).trim();
          }
          try {
            const result = await api("POST", `/devices/${encodeURIComponent(id)}/messages/deviceBound`, { hub, body: { body: body.value, properties } });
            append(answer, alert(`Queued as ${result.messageId}; delivered when the device is connected.`, "ok"));
            body.value = "";
          } catch (error) {
            append(answer, alert(error.message));
          }
        },
      },
    },
    h("h2", { id: "c2d-title", text: "Send a cloud-to-device message" }),
    field("Message body", body),
    field("Application properties", props, "One name=value per line (optional)."),
    h("div", { class: "actions" }, h("button", { type: "submit", text: "Send" })),
    answer,
  );
}

function telemetrySection(hub, id) {
  const feed = h("ul", { class: "feed", "aria-label": "Telemetry, newest first" });
  const state = h("p", { class: "muted", "aria-live": "polite", text: "Connecting…" });
  const controller = new AbortController();
  let last = null;
  const show = (event) => {
    const text = event.body !== null ? event.body : `(binary) ${event.bodyBase64}`;
    const props = Object.entries(event.applicationProperties || {}).map(([k, v]) => `${k}=${v}`).join(" ");
    feed.prepend(
      h("li", { class: "telemetry", dataset: { seq: String(event.sequenceNumber) } }, h("span", { class: "when", text: when(event.enqueuedTimeUtc) }), text, props ? h("span", { class: "muted", text: `  ${props}` }) : null),
    );
    while (feed.children.length > 200) feed.lastChild.remove();
    last = event.sequenceNumber;
  };
  const run = async () => {
    try {
      const recent = await api("GET", `/devices/${encodeURIComponent(id)}/messages/events?limit=20`, { hub, signal: controller.signal });
      recent.forEach(show);
      if (!recent.length) last = null;
    } catch (error) {
      if (controller.signal.aborted) return;
      state.textContent = `Could not read telemetry: ${error.message}`;
      return;
    }
    // The server ends a stream after a while; reconnect from the last message seen.
    while (!controller.signal.aborted) {
      try {
        const after = last === null ? "" : `&after=${last}`;
        state.textContent = "Live: new messages appear at the top.";
        state.dataset.live = "yes";
        await stream(`/devices/${encodeURIComponent(id)}/messages/events/stream?timeout=300${after}`, {
          hub,
          signal: controller.signal,
          onEvent: (name, data) => {
            if (name === "telemetry") show(JSON.parse(data));
          },
        });
      } catch (error) {
        if (controller.signal.aborted) return;
        state.dataset.live = "no";
        state.textContent = `The live stream stopped (${error.message}); retrying…`;
        await new Promise((resolve) => setTimeout(resolve, 3000));
      }
    }
  };
  run();
  const section = h(
    "section",
    { class: "card", "aria-labelledby": "telemetry-title" },
    h("h2", { id: "telemetry-title", text: "Telemetry" }),
    state,
    feed,
  );
  return { el: section, stop: () => controller.abort() };
}

async function deviceDetail(view, hub, id) {
  const device = await api("GET", `/devices/${encodeURIComponent(id)}`, { hub });
  const twin = await api("GET", `/twins/${encodeURIComponent(id)}`, { hub });
  const problem = h("div", { "aria-live": "assertive" });
  const reload = () => window.dispatchEvent(new HashChangeEvent("hashchange"));
  const actions = [];
  if (can(RIGHTS.registryWrite)) {
    const next = device.status === "enabled" ? "disabled" : "enabled";
    actions.push(
      h("button", {
        type: "button",
        class: next === "disabled" ? "danger" : "secondary",
        text: next === "disabled" ? "Disable on the hub" : "Enable on the hub",
        on: {
          click: async () => {
            clear(problem);
            try {
              await api("PUT", `/devices/${encodeURIComponent(id)}`, { hub, etag: device.etag, body: { ...device, status: next } });
              notify(`Device ${id} ${next}.`);
              reload();
            } catch (error) {
              append(problem, alert(error.stale ? STALE_MESSAGE : error.message));
            }
          },
        },
      }),
    );
    if (device.authentication && device.authentication.type === "sas") {
      const keys = h("div", { "aria-live": "polite" });
      actions.push(
        h("button", {
          type: "button",
          class: "secondary",
          text: "Show keys",
          on: {
            click: () => {
              clear(keys);
              const sym = device.authentication.symmetricKey;
              append(keys, facts([["Primary key", h("code", { class: "secret", text: sym.primaryKey })], ["Secondary key", h("code", { class: "secret", text: sym.secondaryKey })]]), h("button", { type: "button", class: "link", text: "Hide keys", on: { click: () => clear(keys) } }));
            },
          },
        }),
        keys,
      );
    }
  }
  let telemetry = null;
  let actionsBox = h("p", { class: "muted", text: "Methods, messages and telemetry need ServiceConnect." });
  if (can(RIGHTS.serviceConnect)) {
    telemetry = telemetrySection(hub, id);
    actionsBox = h("div", { class: "split" }, methodSection(hub, id), c2dSection(hub, id));
  }
  append(
    view,
    h("p", {}, link(`← Devices of ${hub}`, "devices", hub)),
    h("h1", { text: `Device ${id}` }),
    h(
      "section",
      { class: "card", "aria-label": "Identity" },
      facts([
        ["Hub", hub],
        ["Connection", connection(device.connectionState)],
        ["Status", device.status === "enabled" ? badge("enabled", "ok") : badge(device.status, "bad")],
        ["Authentication", device.authentication ? device.authentication.type : "—"],
        ["Registration", link(id, "registrations", id)],
      ]),
      actions.length ? h("div", { class: "actions" }, actions) : null,
      problem,
    ),
    telemetry ? telemetry.el : null,
    twinSection(hub, id, twin, reload),
    actionsBox,
  );
  return telemetry ? telemetry.stop : undefined;
}

export async function render(view, params) {
  const hubs = await servedHubs();
  let hub = params[0] || sessionStorage.getItem(REMEMBERED) || (hubs && hubs[0]);
  if (!hub) {
    append(view, h("h1", { text: "Devices" }), await hubChooser(view, hubs, ""));
    return undefined;
  }
  hub = hub.toLowerCase();
  sessionStorage.setItem(REMEMBERED, hub);
  if (params[1]) return deviceDetail(view, hub, params[1]);
  try {
    await deviceList(view, hub, hubs);
  } catch (error) {
    clear(view);
    append(view, h("h1", { text: "Devices" }), await hubChooser(view, hubs, hub), alert(error.message));
  }
  return undefined;
}
