"""The Pulumi program (`__main__.py` calls `infra.program.main`), its typed stack config and offline render.

`infra.config`, `infra.checks`, `infra.serve_config` and `infra.manifests` import without Pulumi.
"""
