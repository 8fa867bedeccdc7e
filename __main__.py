"""appstack: settings -> app topology -> platform -> exports."""

from __future__ import annotations

import pulumi

from components import apps, secrets, settings
from components.platforms.select import deploy

config = settings.load()
app = apps.build(config, secrets.resolve(config))
platform = deploy(config, app)

pulumi.export("app", app.name)
pulumi.export("publicUrl", platform.public_url)
pulumi.export("images", platform.images)
pulumi.export("networks", platform.networks)
pulumi.export("edgeCaCertificate", platform.edge_ca)
for key, value in {**app.outputs, **platform.secret_outputs}.items():
    pulumi.export(key, pulumi.Output.secret(value))
