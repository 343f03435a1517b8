"""`pulumi up` entry point; the program lives in infra/."""

from infra.program import main

main(check_docker_daemon=True)  # the real engine: image builds need a daemon (render and the tests use none)
