// The privacy centre: a data subject's requests through the privacy API, from this origin only.
// The subject token lives in this script's memory (not in storage, not in a cookie): closing
// the tab ends the session. Every value shown is set as text, never as markup.
"use strict";

(function () {
  const KINDS = {
    access: "See my data (access)", erasure: "Erase my data", opt_out: "Object and opt out", consent: "Change my consent",
  };
  const STATUS = {
    verifying: "waiting for your code", verified: "verified, passed to the stores", in_progress: "the stores are working on it",
    extended: "the stores are working on it (deadline extended)", completed: "done", denied: "refused (see the reasons we sent you)",
    failed: "could not be completed: contact the stores", unverified: "closed: the code was never entered", received: "received",
  };
  const state = { id: null, token: null, kind: null };
  const $ = (id) => document.getElementById(id);

  function say(text) { $("problem").textContent = ""; $("status").textContent = text; }
  function fail(text) { $("status").textContent = ""; $("problem").textContent = text; }
  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return d.toLocaleString(undefined, { dateStyle: "long", timeStyle: "short" }) + " (" + iso.replace("+00:00", "Z") + ")";
  }
  function show(stepId) {
    for (const id of ["step-ask", "step-verify", "step-track"]) $(id).hidden = id !== stepId && !(id === "step-ask" && stepId === "step-ask");
    const title = $(stepId).querySelector("h2");
    if (stepId !== "step-ask" && title) title.focus();
  }

  async function call(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (state.token) headers.Authorization = "Bearer " + state.token;
    const response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "omit", cache: "no-store",
    });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      const message = data && data.error ? data.error.message : "the service answered " + response.status;
      throw new Error(message);
    }
    return data;
  }

  function track(request) {
    $("track-id").textContent = request.id;
    $("track-kind").textContent = KINDS[request.kind] || request.kind;
    $("track-status").textContent = STATUS[request.status] || request.status;
    $("track-due").textContent = when(request.due_at) + (request.overdue ? ": overdue" : "");
    let explain = "";
    if (request.status === "completed" && request.kind !== "access") explain = "Every store has carried out your request.";
    if (request.status === "completed" && request.kind === "erasure") explain += " Your verification session ends here.";
    $("track-explain").textContent = explain;
    $("download").hidden = !(request.kind === "access" && request.status === "completed");
  }

  function selectedKind() { return document.querySelector("input[name=kind]:checked").value; }

  document.addEventListener("DOMContentLoaded", () => {
    for (const radio of document.querySelectorAll("input[name=kind]")) {
      radio.addEventListener("change", () => { $("consent-choices").hidden = selectedKind() !== "consent"; });
    }

    $("ask").addEventListener("submit", async (event) => {
      event.preventDefault();
      const customer = $("customer").value.trim();
      if (!$("customer").checkValidity() || !customer) { fail("Enter your customer number (letters, digits, dots, dashes)."); $("customer").focus(); return; }
      const body = { kind: selectedKind(), customer_ref: customer };
      if (body.kind === "consent") {
        body.consent = [];
        for (const select of document.querySelectorAll("select[name=consent]")) {
          if (select.value) body.consent.push({ purpose: select.dataset.purpose, action: select.value });
        }
        if (!body.consent.length) { fail("Choose at least one consent to give or withdraw."); return; }
      }
      try {
        state.token = null;
        const answer = await call("POST", "/v1/requests", body);
        state.id = answer.request.id; state.kind = answer.request.kind;
        $("request-id").textContent = state.id;
        say("Request " + state.id + " received. The answer is due by " + when(answer.request.due_at) + ".");
        show("step-verify");
      } catch (error) { fail("The request was not sent: " + error.message); }
    });

    $("verify").addEventListener("submit", async (event) => {
      event.preventDefault();
      const code = $("code").value.trim();
      if (!/^[0-9]{8}$/.test(code)) { fail("The code has 8 digits."); $("code").focus(); return; }
      try {
        const answer = await call("POST", "/v1/requests/" + encodeURIComponent(state.id) + "/verify", { code });
        state.token = answer.subject_token;
        $("code").value = "";
        say("Verified: request " + state.id + " is yours and has been passed to the stores.");
        track(answer.request);
        show("step-track");
      } catch (error) { fail("The code was not accepted: " + error.message); }
    });

    $("refresh").addEventListener("click", async () => {
      try {
        const request = await call("GET", "/v1/requests/" + encodeURIComponent(state.id));
        track(request);
        say("Status: " + (STATUS[request.status] || request.status) + ".");
      } catch (error) { fail("Could not read the status: " + error.message); }
    });

    $("fetch-answer").addEventListener("click", async () => {
      try {
        const response = await fetch("/v1/requests/" + encodeURIComponent(state.id) + "/access?format=html", {
          headers: { Accept: "text/html", Authorization: "Bearer " + state.token }, credentials: "omit", cache: "no-store",
        });
        if (!response.ok) {
          let message = "the service answered " + response.status;
          try { const data = await response.json(); message = data.error.message; } catch (e) { /* keep the status */ }
          throw new Error(message);
        }
        const html = await response.text();
        const page = new DOMParser().parseFromString(html, "text/html");
        const json = page.getElementById("answer-json").textContent;
        const name = "my-data-" + state.id;
        $("save-html").href = URL.createObjectURL(new Blob([html], { type: "text/html" }));
        $("save-html").download = name + ".html";
        $("save-json").href = URL.createObjectURL(new Blob([JSON.stringify(JSON.parse(json), null, 2)], { type: "application/json" }));
        $("save-json").download = name + ".json";
        $("saved").hidden = false;
        $("answer-view").srcdoc = html;
        $("answer-view").hidden = false;
        $("fetch-answer").hidden = true;
        say("Your data is below. Save both copies now: the service no longer keeps it.");
        $("save-html").focus();
      } catch (error) { fail("Could not download your data: " + error.message); }
    });
  });
})();
