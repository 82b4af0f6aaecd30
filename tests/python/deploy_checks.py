"""Helpers of tests/deploy/ that need Python packages (run with the deploy tools' venv, which
scripts/deploy-tools installs from tests/python/deploy-requirements.txt).

    python deploy_checks.py yaml2json FILE
        Prints the YAML documents of FILE as one JSON array (empty documents left out), so
        that the Rust tests can read YAML without a YAML crate.

    python deploy_checks.py servicemonitor FILE
        Validates every ServiceMonitor in FILE (a kustomize build's output, several documents)
        against the prometheus-operator CRD's schema, as generated into the pydantic models of
        cloudcoil-models-prometheus-operator. kubernetes-validate only knows Kubernetes' own
        kinds, so this is how the CRD gets checked. pydantic ignores unknown keys, so a
        misspelt field would pass silently: the document is also dumped back from the model
        and every key it had must still be there. Fails when FILE has no ServiceMonitor.
"""

import json
import sys

import yaml


def load(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def dropped_keys(original, dumped, path="$"):
    """Paths of keys in `original` that are missing from `dumped` (unknown to the schema)."""
    missing = []
    if isinstance(original, dict):
        if not isinstance(dumped, dict):
            return [path]
        for key, value in original.items():
            if key not in dumped:
                missing.append(f"{path}.{key}")
            else:
                missing.extend(dropped_keys(value, dumped[key], f"{path}.{key}"))
    elif isinstance(original, list):
        if not isinstance(dumped, list) or len(dumped) != len(original):
            return [path]
        for i, (a, b) in enumerate(zip(original, dumped)):
            missing.extend(dropped_keys(a, b, f"{path}[{i}]"))
    return missing


def servicemonitors(path):
    # Imported here: the models module is large (a second to import) and yaml2json needs none.
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor
    from pydantic import ValidationError

    found = [d for d in load(path) if d.get("kind") == "ServiceMonitor"]
    if not found:
        print(f"{path}: no ServiceMonitor to validate", file=sys.stderr)
        return 1
    failed = 0
    for doc in found:
        name = doc.get("metadata", {}).get("name", "?")
        if doc.get("apiVersion") != "monitoring.coreos.com/v1":
            print(f"ServiceMonitor {name}: apiVersion must be monitoring.coreos.com/v1", file=sys.stderr)
            failed += 1
            continue
        try:
            model = ServiceMonitor.model_validate(doc)
        except ValidationError as e:
            print(f"ServiceMonitor {name} does not match the CRD schema:\n{e}", file=sys.stderr)
            failed += 1
            continue
        dumped = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
        unknown = dropped_keys(doc, dumped)
        if unknown:
            print(f"ServiceMonitor {name}: fields unknown to the CRD schema: {', '.join(unknown)}", file=sys.stderr)
            failed += 1
            continue
        print(f"ServiceMonitor {name}: valid")
    return 1 if failed else 0


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    command, path = argv[1], argv[2]
    if command == "yaml2json":
        json.dump(load(path), sys.stdout)
        return 0
    if command == "servicemonitor":
        return servicemonitors(path)
    print(f"unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
