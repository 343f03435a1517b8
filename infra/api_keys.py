"""The serving API's keys as a Kubernetes Secret, from the Pulumi secret config `apiKeys` (comma-separated, so a new
key can be added before the old one goes). Every Ray container reads it as the environment variable API_KEYS
(infra/manifests.py), which each replica reads at start (serving_app/auth.py). The value stays a Pulumi secret:
it is written only into the Secret, never into a manifest, an output or a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from serving_app.auth import ENV as API_KEYS_KEY
from serving_app.auth import APIKeys

__all__ = ["API_KEYS_KEY", "ApiKeySecret", "ApiKeySecretArgs", "api_key_problems"]


def api_key_problems(value: Optional[str], allow_unauthenticated: bool) -> tuple[list[str], list[str]]:
    """(problems, warnings) of the apiKeys secret config, checked at preview; neither ever repeats a key."""
    if value is None:
        if allow_unauthenticated:
            return [], ["no apiKeys and serve.allowUnauthenticated: true: anyone who reaches the serve port can use "
                        "the API"]
        return ["no apiKeys: set them (pulumi config set --secret apiKeys <key>[,<next key>]), or set "
                "serve.allowUnauthenticated: true to serve without keys"], []
    try:
        keys = APIKeys(value.split(","))
    except ValueError as error:
        return [f"apiKeys: {str(error).removeprefix(API_KEYS_KEY + ': ')}"], []
    if not keys.required:
        return ["apiKeys: holds no key (only commas or spaces)"], []
    return [], []


@dataclass
class ApiKeySecretArgs:
    namespace: pulumi.Input[str]
    name_prefix: str
    labels: dict[str, str]
    api_keys: pulumi.Input[str]


class ApiKeySecret(pulumi.ComponentResource):
    secret_name: str

    def __init__(self, name: str, args: ApiKeySecretArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-serving:index:ApiKeySecret", name, None, opts)
        self.secret_name = f"{args.name_prefix}-api-keys"
        self.secret = k8s.core.v1.Secret(
            name,
            metadata=k8s.meta.v1.ObjectMetaArgs(name=self.secret_name, namespace=args.namespace, labels=args.labels),
            type="Opaque",
            string_data={API_KEYS_KEY: pulumi.Output.secret(args.api_keys)},
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"secretName": self.secret_name})
