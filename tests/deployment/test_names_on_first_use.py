"""`modules.deployment` loads each public name from its module on first use: every name in
`__all__` must resolve, to the object its module defines, and an unknown name must still be an
AttributeError (so `from modules.deployment import typo` fails as it always did)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import modules.deployment as deployment


def test_every_public_name_resolves_to_its_modules_object() -> None:
    assert sorted(deployment._WHERE) == sorted(deployment.__all__)
    for name in deployment.__all__:
        module = importlib.import_module(f"modules.deployment.{deployment._WHERE[name]}")
        assert getattr(deployment, name) is getattr(module, name), name
    assert set(deployment.__all__) <= set(dir(deployment))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = deployment.no_such_name
    with pytest.raises(ImportError):
        exec("from modules.deployment import no_such_name", {})


def test_signing_a_mapping_loads_neither_the_manifest_nor_the_envelope() -> None:
    script = (
        "import sys\n"
        "from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey\n"
        "from modules.deployment import sign_mapping, verify_document\n"
        "key = Ed25519PrivateKey.generate()\n"
        "verify_document(sign_mapping({'a': 1}, key), [key.public_key()], what='a mapping')\n"
        "print(sorted(m for m in sys.modules if m.startswith('modules.deployment.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = done.stdout
    assert "_manifest" not in loaded and "_envelope" not in loaded and "_selection" not in loaded
