// Individual enrollments: #/enrollments (list), #/enrollments/new, #/enrollments/<id>.

import { KINDS, renderDetail, renderList } from "./enrollment-common.js";

export async function render(view, params) {
  if (params[0]) await renderDetail(view, KINDS.enrollments, params[0]);
  else await renderList(view, KINDS.enrollments);
}
