"""The admin web page at ``/admin/ui``: server-rendered HTML over the admin operations.

``install`` adds its routes and its server-side state (sessions) to the Quart app.
"""

from __future__ import annotations

import time

from gateway.ui.routes import UI, blueprint


def install(app) -> UI:
    ui = UI(clock=time.time)  # wall clock: a session's times are signed into its cookie
    app.extensions["tollhouse_ui"] = ui
    app.register_blueprint(blueprint)
    return ui
