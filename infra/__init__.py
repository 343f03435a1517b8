"""The Pulumi program (the root `__main__.py` calls `infra.program.main`), its typed stack config and offline render.

`infra.config`, `infra.stack_sections`, `infra.checks`, `infra.dockerfile`, `infra.serve_config` and `infra.manifests`
import without Pulumi.
"""
