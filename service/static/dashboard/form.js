// The submit form, generated from `task-types`: one field per argument, with the server's
// validation errors shown next to the fields they name.
import { $, TERMINAL, el, problemText, readJson, say, shortId, params } from "./util.js";
import { announceEnd, apply, mine, setTaskNames, tasks } from "./list.js";

const ui = {
  form: $("submit-form"),
  type: $("task-type"),
  description: $("task-description"),
  fields: $("task-fields"),
  formError: $("form-error"),
  submit: $("submit-button"),
};

let taskTypes = [];
let fieldInputs = new Map(); // argument name -> {input, error, kind, required}

export async function loadTaskTypes() {
  try {
    const response = await fetch("task-types", { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(String(response.status));
    const body = await response.json();
    taskTypes = (Array.isArray(body) ? body : body.items || []).filter((t) => t && t.name);
  } catch {
    showFormError("Could not load the task types; retrying…");
    setTimeout(loadTaskTypes, 3000);
    return;
  }
  hideFormError();
  ui.type.replaceChildren(...taskTypes.map((t) => el("option", { value: t.name, text: t.name })));
  const wanted = params.get("task");
  if (wanted && taskTypes.some((t) => t.name === wanted)) ui.type.value = wanted;
  ui.type.disabled = taskTypes.length === 0;
  ui.submit.disabled = taskTypes.length === 0;
  setTaskNames(taskTypes.map((t) => t.name));
  renderFields();
}

function currentType() {
  return taskTypes.find((t) => t.name === ui.type.value) || null;
}

function constraintHint(prop, kind) {
  const parts = [kind === "integer" ? "whole number" : kind === "number" ? "number" : kind];
  if (typeof prop.minimum === "number") parts.push(`≥ ${prop.minimum}`);
  if (typeof prop.exclusiveMinimum === "number") parts.push(`> ${prop.exclusiveMinimum}`);
  if (typeof prop.maximum === "number") parts.push(`≤ ${prop.maximum}`);
  if (typeof prop.exclusiveMaximum === "number") parts.push(`< ${prop.exclusiveMaximum}`);
  if (typeof prop.maxLength === "number") parts.push(`up to ${prop.maxLength} characters`);
  if (prop.default !== undefined) parts.push(`default ${JSON.stringify(prop.default)}`);
  return parts.join(", ");
}

function propKind(prop) {
  let type = prop.type;
  if (Array.isArray(type)) type = type.find((t) => t !== "null");
  if (!type && Array.isArray(prop.anyOf)) {
    type = prop.anyOf.map((p) => p.type).find((t) => t && t !== "null");
  }
  if (Array.isArray(prop.enum)) return "enum";
  return ["number", "integer", "string", "boolean"].includes(type) ? type : "json";
}

function renderFields() {
  const type = currentType();
  ui.description.replaceChildren(...withCode(type ? type.description || "" : ""));
  const legend = ui.fields.querySelector("legend");
  ui.fields.replaceChildren(legend);
  fieldInputs = new Map();
  hideFormError();
  if (!type) return;
  const schema = type.schema || {};
  const props = schema.properties || {};
  const required = new Set(schema.required || []);
  const names = Object.keys(props);
  if (names.length === 0) {
    ui.fields.append(el("p", { class: "hint", text: "This task takes no arguments." }));
  }
  for (const name of names) {
    const prop = props[name] || {};
    const kind = propKind(prop);
    const id = `arg-${name}`;
    const hintId = `${id}-hint`;
    const errorId = `${id}-error`;
    const isRequired = required.has(name);
    let input;
    if (kind === "enum") {
      input = el("select", { id, name });
      if (!isRequired) input.append(el("option", { value: "", text: "—" }));
      for (const choice of prop.enum) {
        input.append(el("option", { value: JSON.stringify(choice), text: String(choice) }));
      }
      if (prop.default !== undefined) input.value = JSON.stringify(prop.default);
    } else if (kind === "boolean") {
      input = el("input", { id, name, type: "checkbox" });
      input.checked = prop.default === true;
    } else if (kind === "json") {
      input = el("textarea", { id, name, rows: 2, spellcheck: "false" });
      if (prop.default !== undefined) input.value = JSON.stringify(prop.default);
    } else {
      const numeric = kind === "number" || kind === "integer";
      input = el("input", {
        id,
        name,
        type: numeric ? "number" : "text",
        step: kind === "integer" ? "1" : numeric ? "any" : null,
        inputmode: kind === "integer" ? "numeric" : kind === "number" ? "decimal" : null,
        min: numeric && typeof prop.minimum === "number" ? String(prop.minimum) : null,
        max: numeric && typeof prop.maximum === "number" ? String(prop.maximum) : null,
        autocomplete: "off",
      });
      if (prop.default !== undefined && prop.default !== null) input.value = String(prop.default);
    }
    if (isRequired) input.setAttribute("aria-required", "true");
    input.setAttribute("aria-describedby", `${hintId} ${errorId}`);
    const error = el("p", { id: errorId, class: "error-text field-error", hidden: true });
    const constraints = constraintHint(prop, kind);
    const hint = prop.description ? `${prop.description} (${constraints})` : constraints;
    const label = el(
      "label",
      { for: id },
      prop.title || name,
      isRequired ? el("span", { class: "required", text: " (required)" }) : null,
    );
    const wrap = el(
      "div",
      { class: `field field-${kind}`, "data-field": name },
      label,
      input,
      el("p", { id: hintId, class: "hint", text: hint }),
      error,
    );
    input.addEventListener("input", () => clearFieldError(name));
    ui.fields.append(wrap);
    fieldInputs.set(name, { input, error, kind, required: isRequired });
  }
}

// Descriptions write argument names in backticks, as in Markdown: show those as code.
function withCode(text) {
  return String(text)
    .split("`")
    .map((part, i) => (i % 2 ? el("code", { text: part }) : document.createTextNode(part)));
}

function showFormError(text) {
  ui.formError.textContent = text;
  ui.formError.hidden = false;
}

function hideFormError() {
  ui.formError.textContent = "";
  ui.formError.hidden = true;
}

function setFieldError(name, message) {
  const field = fieldInputs.get(name);
  if (!field) return false;
  const text = field.error.hidden ? message : `${field.error.textContent}; ${message}`;
  field.error.textContent = text;
  field.error.hidden = false;
  field.input.setAttribute("aria-invalid", "true");
  return true;
}

function clearFieldError(name) {
  const field = fieldInputs.get(name);
  if (!field) return;
  field.error.textContent = "";
  field.error.hidden = true;
  field.input.removeAttribute("aria-invalid");
}

function clearErrors() {
  for (const name of fieldInputs.keys()) clearFieldError(name);
  hideFormError();
}

// An integer typed beyond 2^53, which a JavaScript number would round: its digits, written into
// the JSON body as they were typed.
class BigDigits {
  constructor(digits) {
    this.digits = digits;
  }

  toJSON() {
    return `\u0000digits:${this.digits}`;
  }
}

function bodyOf(value) {
  return JSON.stringify(value).replace(/"\\u0000digits:(-?\d+)"/g, "$1");
}

// Read the fields into kwargs; returns null after marking any field the browser cannot read.
function collectKwargs() {
  const kwargs = {};
  let ok = true;
  for (const [name, field] of fieldInputs) {
    const { input, kind } = field;
    if (kind === "boolean") {
      kwargs[name] = input.checked;
      continue;
    }
    const raw = input.value;
    if (kind === "number" || kind === "integer") {
      if (input.validity && input.validity.badInput) {
        setFieldError(name, "Enter a number.");
        ok = false;
      } else if (raw.trim() !== "") {
        const value = Number(raw);
        if (/^-?\d+$/.test(raw.trim()) && !Number.isSafeInteger(value)) {
          // Beyond what a double holds exactly: sent as its digits (see bodyOf).
          kwargs[name] = new BigDigits(raw.trim());
        } else if (Number.isFinite(value)) kwargs[name] = value;
        else {
          setFieldError(name, "Enter a number.");
          ok = false;
        }
      }
      // Empty: left out, so the server applies the default or says it is required.
    } else if (kind === "enum") {
      if (raw !== "") kwargs[name] = JSON.parse(raw);
    } else if (kind === "json") {
      if (raw.trim() === "") continue;
      try {
        kwargs[name] = JSON.parse(raw);
      } catch {
        setFieldError(name, "Enter valid JSON.");
        ok = false;
      }
    } else if (raw !== "") {
      // Empty: left out, so a required field is answered "Field required" next to it.
      kwargs[name] = raw;
    }
  }
  return ok ? kwargs : null;
}

// Find which field a server error names, however it spells the location: "seconds",
// "kwargs.seconds", ["kwargs", "seconds"], "/kwargs/seconds", or "args[0]".
function fieldOf(error) {
  let loc = error.field ?? error.loc ?? error.name ?? error.pointer ?? error.path;
  if (loc === undefined || loc === null) return null;
  const parts = Array.isArray(loc)
    ? loc.map(String)
    : String(loc).replace(/^#?\//, "").split(/[./]/);
  for (let i = parts.length - 1; i >= 0; i -= 1) {
    if (fieldInputs.has(parts[i])) return parts[i];
    const positional = /^args\[(\d+)\]$/.exec(parts[i]);
    if (positional) {
      const name = [...fieldInputs.keys()][Number(positional[1])];
      if (name) return name;
    }
  }
  return null;
}

function showProblem(problem, response) {
  const errors = problem && Array.isArray(problem.errors) ? problem.errors : [];
  const unplaced = [];
  let first = null;
  for (const error of errors) {
    const message = String(error.message ?? error.msg ?? error.detail ?? error.reason ?? "is not valid");
    const name = fieldOf(error);
    if (name && setFieldError(name, message)) {
      first = first || name;
    } else {
      const where = error.field ?? error.loc;
      unplaced.push(where ? `${Array.isArray(where) ? where.join(".") : where}: ${message}` : message);
    }
  }
  if (unplaced.length || !first) {
    showFormError([problemText(problem, response), ...unplaced].join(" — "));
  }
  if (first) fieldInputs.get(first).input.focus();
  say(errors.length ? "The task was not submitted: check the marked fields." : "The task was not submitted.");
}

async function submitTask(event) {
  event.preventDefault();
  const type = currentType();
  if (!type) return;
  clearErrors();
  const kwargs = collectKwargs();
  if (!kwargs) {
    const bad = [...fieldInputs.values()].find((f) => !f.error.hidden);
    if (bad) bad.input.focus();
    return;
  }
  ui.submit.disabled = true;
  ui.form.setAttribute("aria-busy", "true");
  try {
    const response = await fetch("tasks", {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        Accept: "application/json, application/problem+json",
      },
      body: bodyOf({ task: type.name, kwargs }),
    });
    const body = await readJson(response);
    if (response.status === 202 && body) {
      mine.add(body.id);
      apply(body, true);
      // A quick task may have ended on the stream before this answer came back.
      const now = tasks.get(body.id);
      if (now && TERMINAL.has(now.state)) announceEnd(now);
      else say(`Submitted ${type.name} task ${shortId(body.id)}.`);
    } else {
      showProblem(body, response);
    }
  } catch {
    showFormError("The server did not answer; the task may not have been submitted.");
  } finally {
    ui.submit.disabled = false;
    ui.form.removeAttribute("aria-busy");
  }
}


export function init() {
  ui.type.addEventListener("change", renderFields);
  ui.form.addEventListener("submit", submitTask);
}
