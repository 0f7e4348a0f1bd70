// Enrollment groups: #/groups (list), #/groups/new, #/groups/<id>.

import { KINDS, renderDetail, renderList } from "./enrollment-common.js";

export async function render(view, params) {
  if (params[0]) await renderDetail(view, KINDS.groups, params[0]);
  else await renderList(view, KINDS.groups);
}
