"""Developer tooling beside the product: local mode (a stack's Serve config on a Ray head on this machine), the
private Ray head the tests and benchmarks deploy on, and the random test-model generator.

Nothing here is deployed: the cluster runs `serving_app`, built by the Pulumi program in `infra/`. Importable
without Ray (the Ray head is driven through its CLI and REST API), so any engine environment can use it.
"""
