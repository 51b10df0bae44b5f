// The login form: the token goes in a POST body (never a URL); the answer sets an HttpOnly cookie.
"use strict";
document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = document.getElementById("login-error");
  error.hidden = true;
  const token = document.getElementById("token").value;
  let answer;
  try {
    answer = await fetch("/ui/login", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify({token}),
    });
  } catch (e) {
    error.textContent = "the coordinator did not answer";
    error.hidden = false;
    return;
  }
  if (answer.ok) {
    window.location.assign("/");
    return;
  }
  let message = "login refused (" + answer.status + ")";
  try { message = (await answer.json()).error.message; } catch (e) { /* keep the status */ }
  error.textContent = message;
  error.hidden = false;
  document.getElementById("token").value = "";
});
