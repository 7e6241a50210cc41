// A tiny single-page app: client-side route display plus the notes API.
(function () {
  const $ = (id) => document.getElementById(id);
  $("route").textContent = "route: " + location.pathname;

  async function load() {
    const [version, notes] = await Promise.all([
      fetch("/api/version").then((r) => r.json()),
      fetch("/api/notes").then((r) => r.json()),
    ]);
    $("identity").textContent = `api ${version.color} ${version.version}`;
    $("notes").replaceChildren(...notes.map((n) => {
      const li = document.createElement("li");
      li.textContent = n.body;
      return li;
    }));
  }

  $("new-note").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = new FormData(event.target).get("body");
    await fetch("/api/notes", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ body }),
    });
    event.target.reset();
    load();
  });

  load().catch((err) => { $("identity").textContent = "api unavailable: " + err; });
})();
