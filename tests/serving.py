"""The tests run the app the way users' clusters do; the machinery is the product's own (devtools/local_ray.py)."""

from devtools.local_ray import LocalRay, pids_using, application, http_json, local_ray  # noqa: F401
