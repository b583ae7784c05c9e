"""Signed documents for simulated fleets: one publisher key, one module, versions by digest."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modules.deployment import DeploymentDocument
from modules.signing import public_key_pem

KEY = Ed25519PrivateKey.generate()
DIGEST_1 = "sha256:" + "11" * 32
DIGEST_2 = "sha256:" + "22" * 32


def trust_file(folder: Path, key: Ed25519PrivateKey = KEY) -> Path:
    path = folder / "publisher.pub.pem"
    path.write_text(public_key_pem(key))
    return path


def document(
    version: int,
    digest: str = DIGEST_1,
    *,
    fleet: str = "sim",
    name: str = "iris",
    module: str = "scorer",
    **fields: Any,
) -> DeploymentDocument:
    return DeploymentDocument.model_validate(
        {
            "fleet": fleet,
            "name": name,
            "version": version,
            "targetCondition": fields.pop("target", "*"),
            "createdAt": datetime.now(UTC),
            "content": {
                "modulesContent": {
                    "$edgeAgent": {
                        "properties.desired": {
                            "schemaVersion": "1.1",
                            "modules": {
                                module: {
                                    "type": "modelfleet",
                                    "status": "running",
                                    "restartPolicy": fields.pop("restart_policy", "always"),
                                    "settings": {
                                        "module": f"modules/{module}",
                                        "digest": digest,
                                        "port": 7000,
                                    },
                                }
                            },
                        }
                    }
                }
            },
            **fields,
        }
    )
