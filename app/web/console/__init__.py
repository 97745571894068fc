"""The operator's console: server-rendered pages over the same store and actions as the API.

`session` logs people in (the admin token on a form → a signed, HttpOnly, SameSite=Strict cookie with
a CSRF token), `views` shapes what the pages show, `pages` renders them, `actions` are the forms' POSTs.
Live parts follow the run's event stream over the existing SSE endpoint with a few lines of plain JS
(`app/web/static/run.js`); nothing is loaded from elsewhere.
"""
