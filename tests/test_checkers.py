"""Real checkers on the synthesized output: cfn-lint, cdk-nag (AwsSolutions), checkov."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cdk_nag import AwsSolutionsChecks

from tests.conftest import ROOT, checkov_binary

pytestmark = pytest.mark.tools


def test_cfn_lint_reports_no_errors(synth) -> None:  # type: ignore[no-untyped-def]
    templates = sorted(str(p) for p in synth.outdir.glob("*.template.json"))
    assert len(templates) == 2
    result = subprocess.run(
        [sys.executable, "-m", "cfnlint", "--format", "json", *templates],
        capture_output=True, text=True, check=False,
    )
    findings = json.loads(result.stdout or "[]")
    errors = [f"{f['Rule']['Id']} {f['Location']['Path']}: {f['Message']}" for f in findings if f["Level"] == "Error"]
    assert errors == []
    # W3005 (a DependsOn that a reference already implies) comes from aws-cdk-lib's own
    # constructs and is harmless; any other warning is ours to fix.
    warnings = [f"{f['Rule']['Id']}: {f['Message']}" for f in findings if f["Level"] == "Warning" and f["Rule"]["Id"] != "W3005"]
    assert warnings == []


def test_cdk_nag_aws_solutions_has_no_unacknowledged_finding(synth) -> None:  # type: ignore[no-untyped-def]
    report = AwsSolutionsChecks().validate_scope(synth.app)
    findings = [f"{v.rule_name} at {[r.resource_logical_id for r in v.violating_resources]}" for v in report.violations]
    assert findings == []


def test_cdk_nag_still_sees_a_new_finding() -> None:
    """The acknowledgments are granular: an unrelated managed policy is still reported."""
    import aws_cdk as cdk
    from aws_cdk import aws_iam as iam

    app = cdk.App()
    stack = cdk.Stack(app, "Probe")
    iam.Role(stack, "Role", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
             managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name("ReadOnlyAccess")])
    report = AwsSolutionsChecks().validate_scope(app)
    assert any(v.rule_name.startswith("AwsSolutions-IAM4") for v in report.violations)


SKIPS = yaml.safe_load((ROOT / "tests" / "checkov-skips.yaml").read_text())


def run_checkov(directory: Path, framework: str) -> list[dict]:
    skips = ",".join(SKIPS[framework]) if SKIPS.get(framework) else None
    command = [checkov_binary(), "-d", str(directory), "--framework", framework, "--output", "json",
               "--compact", "--quiet", "--skip-download"]
    if skips:
        command += ["--skip-check", skips]
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CKV_NO_PROGRESS": "1", "LOG_LEVEL": "ERROR"},
    )
    assert result.stdout.strip(), result.stderr[-2000:]
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = []
    for report in reports:
        failed += report.get("results", {}).get("failed_checks", [])
    return failed


def test_checkov_kubernetes_manifests(synth) -> None:  # type: ignore[no-untyped-def]
    failed = run_checkov(synth.dist, "kubernetes")
    assert [f"{f['check_id']} {f['resource']} ({f['file_path']})" for f in failed] == []


def test_checkov_cloudformation_templates(synth) -> None:  # type: ignore[no-untyped-def]
    failed = run_checkov(synth.outdir, "cloudformation")
    assert [f"{f['check_id']} {f['resource']}" for f in failed] == []


def test_every_checkov_skip_has_a_reason() -> None:
    text = (ROOT / "tests" / "checkov-skips.yaml").read_text()
    for ids in SKIPS.values():
        for check_id in ids or []:
            line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"- {check_id}"))
            assert "#" in line and len(line.split("#", 1)[1].strip()) > 20, f"{check_id} has no reason"
