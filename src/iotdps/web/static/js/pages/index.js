// The console's pages, in navigation order. Adding a page is one entry here and one module
// beside this file exporting `render(main, params)` (which may return a cleanup function).
//
// Later issues slot in by group: issued certificates, trust bundles and revocation under
// "Certificates"; TPM enrollments under "Provisioning" (next to enrollments and groups).
// A page is shown only when the session holds its `right`; actions inside a page check
// the rights they need themselves (see api.js `can`).

import { RIGHTS } from "../api.js";

export const GROUPS = ["Provisioning", "Certificates", "Hubs"];

export const PAGES = [
  {
    path: "overview",
    title: "Overview",
    group: "Provisioning",
    right: RIGHTS.registrationRead,
    load: () => import("./overview.js"),
  },
  {
    path: "enrollments",
    title: "Enrollments",
    group: "Provisioning",
    right: RIGHTS.enrollmentRead,
    load: () => import("./enrollments.js"),
  },
  {
    path: "groups",
    title: "Enrollment groups",
    group: "Provisioning",
    right: RIGHTS.enrollmentRead,
    load: () => import("./groups.js"),
  },
  {
    path: "registrations",
    title: "Registrations",
    group: "Provisioning",
    right: RIGHTS.registrationRead,
    load: () => import("./registrations.js"),
  },
  {
    path: "refusals",
    title: "Refusals",
    group: "Provisioning",
    right: RIGHTS.registrationRead,
    load: () => import("./refusals.js"),
  },
  {
    path: "cas",
    title: "CA certificates",
    group: "Certificates",
    right: RIGHTS.serviceConfig,
    load: () => import("./cas.js"),
  },
  {
    path: "devices",
    title: "Devices",
    group: "Hubs",
    right: RIGHTS.registryRead,
    load: () => import("./devices.js"),
  },
];
