"""The Hugging Face token and the registry pull credentials as Kubernetes Secrets, values kept Pulumi secrets."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from .manifests import HF_TOKEN_KEY
from .stack_sections import Registry


def dockerconfigjson(server: str, username: str, password: str) -> str:
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    return json.dumps({"auths": {server: {"username": username, "password": password, "auth": auth}}})


@dataclass
class ServingSecretsArgs:
    namespace: pulumi.Input[str]
    name_prefix: str
    labels: dict[str, str]
    hf_token: Optional[pulumi.Input[str]] = None
    registry: Optional[Registry] = None
    registry_password: Optional[pulumi.Input[str]] = None


class ServingSecrets(pulumi.ComponentResource):
    """`hf_secret_name` / `pull_secret_name` are None when the matching secret config is absent."""

    hf_secret_name: Optional[str]
    pull_secret_name: Optional[str]

    def __init__(self, name: str, args: ServingSecretsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-serving:index:ServingSecrets", name, None, opts)
        self.hf_secret_name = None
        self.pull_secret_name = None
        self.secrets: list[k8s.core.v1.Secret] = []
        if args.hf_token is not None:
            self.hf_secret_name = f"{args.name_prefix}-hf-token"
            self.secrets.append(k8s.core.v1.Secret(
                f"{name}-hf-token",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=self.hf_secret_name, namespace=args.namespace,
                                                    labels=args.labels),
                type="Opaque",
                string_data={HF_TOKEN_KEY: pulumi.Output.secret(args.hf_token)},
                opts=pulumi.ResourceOptions(parent=self),
            ))
        if args.registry is not None and args.registry_password is not None:
            self.pull_secret_name = f"{args.name_prefix}-registry"
            registry = args.registry
            config_json = pulumi.Output.secret(args.registry_password).apply(
                lambda password: dockerconfigjson(registry.server, registry.username, password))
            self.secrets.append(k8s.core.v1.Secret(
                f"{name}-registry",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=self.pull_secret_name, namespace=args.namespace,
                                                    labels=args.labels),
                type="kubernetes.io/dockerconfigjson",
                string_data={".dockerconfigjson": pulumi.Output.secret(config_json)},
                opts=pulumi.ResourceOptions(parent=self),
            ))
        self.register_outputs({"hfSecretName": self.hf_secret_name, "pullSecretName": self.pull_secret_name})
