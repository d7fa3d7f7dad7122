// munsit-bridge dashboard: a form's buttons are disabled once it is sent (no double POST).
"use strict";
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.method.toLowerCase() === "post") {
    setTimeout(() => {
      for (const button of form.querySelectorAll("button")) button.disabled = true;
    }, 0);
  }
});
