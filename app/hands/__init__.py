"""The agent's hands inside the sandbox: a small server that edits files and stages the work tree.

Everything in this package runs *inside* the run's sandbox (bubblewrap, or the local sandbox's
plain process), started by `app.sandbox.hands`. It imports only the standard library and pygit2,
never the rest of `app`, because the sandbox sees only this folder. The worker talks to it in
length-prefixed frames (`wire`): JSON requests, JSON answers, raw git objects. Whatever a symlink,
FIFO or race in the workspace does, it does to this process, which sees what the sandbox sees and
holds no secret.
"""
