"""`pulumi up` entry point; the program lives in infra/."""

from infra.program import main

main()
