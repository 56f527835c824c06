"""The MONAI Deploy Workflow Manager examples in ``app/workflows/`` checked against the WM's own
rules, as read from its source (github.com/Project-MONAI/monai-deploy-workflow-manager; paths
below are in that repository), and against the settings the app reads. No network, no WM binary:
what the WM would refuse at registration, fail at dispatch or silently drop is a failure here.

``app/workflows/README.md`` explains the gateway configuration these rules cannot see.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import PurePosixPath
from urllib.parse import urlparse

import pytest

from tests.conftest import ROOT

WORKFLOWS = ROOT / "app" / "workflows"
NAMES = ["bodypart-identify.json", "bodypart-route-chest.json"]

# --- the WM's rules, with where they come from -------------------------------------------------

#: src/Common/Miscellaneous/ValidationConstants.cs: ValidTaskTypes
VALID_TASK_TYPES = {"argo", "aide_clinical_review", "router", "export", "docker", "email",
                    "remote_app_execution", "export_hl7"}
#: src/WorkflowManager/WorkflowManager/Validators/WorkflowValidator.cs: ValidateWorkflowSpecAsync
TASK_ID = re.compile(r"^[a-zA-Z0-9-_]+$")
#: Informatics Gateway src/Configuration/ValidationExtensions.cs: IsAeTitleValid (the WM's
#: validator only checks non-empty and at most 15 characters; the gateway also checks the characters)
AE_TITLE = re.compile(r"^[a-zA-Z0-9_\-]{1,15}$")
#: src/TaskManager/Plug-ins/Docker/Keys.cs: RequiredParameters (DockerPlugin.ValidateEvent throws
#: InvalidTaskException on the first one missing, so the task fails at dispatch)
DOCKER_REQUIRED = {"server_url", "entrypoint", "command", "container_image", "temp_storage_container_path"}
#: src/TaskManager/Plug-ins/Docker/Keys.cs: EnvironmentVariableKeyPrefix; DockerPlugin.BuildContainerSpecification
#: turns every args key with it into a container environment variable (prefix stripped)
ENV_PREFIX = "env_"
#: src/WorkflowManager/WorkflowExecuter/Common/ArtifactMapper.cs: TrimArtifactVariable splits the
#: value on " " and takes the second word, so the braces need their spaces; for
#: ``context.executions.<task>.artifacts.<name>`` it returns the stored output path with no suffix
#: (GetArtifactSuffix is applied to context.input.dicom and output_dir only), so anything after
#: ``}}`` is silently dropped: only these two forms, exactly, are allowed here.
INPUT_DICOM = "{{ context.input.dicom }}"
EXECUTION_ARTIFACT = re.compile(r"^\{\{ context\.executions\.([a-zA-Z0-9-_]+)\.artifacts\.([A-Za-z0-9_]+) \}\}$")
#: src/WorkflowManager/ConditionsResolver/Parser/ConditionalParameterParser.cs (ResolveMatch and
#: its Resolve* methods) with src/WorkflowManager/ConditionsResolver/Constants/ParameterConstants.cs:
#: the parameters a condition may use. Anything else resolves to null, i.e. 'NULL', without error.
EXECUTION_KEYS = "task_id|status|execution_id|output_dir|task_type|previous_task_id|error_msg|start_time|end_time"
PARAMETER = re.compile(
    r"^(?:context\.executions\.(?P<task>[a-zA-Z0-9-_]+)\.(?:" + EXECUTION_KEYS + r"|(?:result|execution_stats)\.\w+)"
    r"|context\.dicom\.series\.(?:any|all)\('[0-9A-Fa-f]{4}','[0-9A-Fa-f]{4}'\)"
    r"|context\.input\.patient_details\.(?:id|name|sex|dob|age|hospital_id)"
    r"|context\.workflow\.(?:name|description))$")
#: src/WorkflowManager/ConditionsResolver/Resovler/Conditional.cs: the comparison operators
#: (the numeric ones need a number on one side: Conditional.Create)
NUMERIC_OPS = {">", "<", ">=", "<=", "=>", "=<"}
OPERATORS = {"==", "!="} | NUMERIC_OPS | {"CONTAINS", "NOT_CONTAINS"}


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def tasks_by_id(wf: dict) -> dict[str, dict]:
    return {t["id"]: t for t in wf["tasks"]}


def upstream(wf: dict, task_id: str) -> set[str]:
    """The tasks that run before ``task_id`` (its ancestors through task_destinations)."""
    parents = {d["name"]: t["id"] for t in wf["tasks"] for d in t.get("task_destinations", [])}
    seen: set[str] = set()
    while task_id in parents and parents[task_id] not in seen:
        task_id = parents[task_id]
        seen.add(task_id)
    return seen


# --- a checker for the WM's condition syntax ---------------------------------------------------

def check_condition(condition: str, task_ids: set[str]) -> None:
    """Raise ``ValueError`` where the WM would resolve a parameter to NULL or fail to parse.

    Parameters ``{{ ... }}`` are resolved first and replaced by a quoted value (or a [list] for
    multi-valued tags: ConditionalParameterParser.ResolveParameters); the rest is
    ``expr := term ((AND|OR) term)*``, ``term := '(' expr ')' | operand OP operand``,
    ``operand := 'quoted' | [list] | NULL | number`` (ConditionalGroup.cs, Conditional.cs).
    """
    def resolve(m: re.Match) -> str:
        expr = m.group(1).strip()  # the WM trims inside the braces (ResolveMatch)
        p = PARAMETER.match(expr)
        if not p:
            raise ValueError(f"{expr!r} is no parameter the WM resolves (it would become NULL)")
        if p.group("task") and p.group("task") not in task_ids:
            raise ValueError(f"{expr!r} names a task the workflow does not have")
        return "'resolved'"

    text = re.sub(r"\{\{(.*?)\}\}", resolve, condition)
    tokens = re.findall(r"'[^']*'|\[[^\]]*\]|==|!=|>=|<=|=>|=<|[<>()]|[A-Za-z_]+|-?\d+(?:\.\d+)?|\S", text)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"{condition!r}: ends early")
        pos += 1
        return tokens[pos - 1]

    def operand() -> str:
        tok = take()
        if tok.startswith("'") or tok.startswith("[") or tok.upper() in ("NULL", "UNDEFINED") or re.fullmatch(r"-?\d+(\.\d+)?", tok):
            return tok
        raise ValueError(f"{condition!r}: {tok!r} is not an operand ('quoted', [list], NULL or a number)")

    def term() -> None:
        if peek() == "(":
            take()
            expr()
            if take() != ")":
                raise ValueError(f"{condition!r}: unbalanced brackets")
            return
        left = operand()
        op = take()
        op = op.upper() if op.isalpha() or "_" in op else op
        if op not in OPERATORS:
            raise ValueError(f"{condition!r}: {op!r} is not an operator ({', '.join(sorted(OPERATORS))})")
        right = operand()
        if op in NUMERIC_OPS and not any(re.fullmatch(r"-?\d+(\.\d+)?", s.strip("'")) for s in (left, right)):
            raise ValueError(f"{condition!r}: {op} needs a number on one side")

    def expr() -> None:
        term()
        while peek() is not None and peek().upper() in ("AND", "OR"):
            take()
            term()

    expr()
    if pos != len(tokens):
        raise ValueError(f"{condition!r}: unexpected {tokens[pos]!r}")


@pytest.mark.parametrize("condition", [
    "{{ context.dicom.series.all('0018','0015') }} == 'CHEST'",
    "{{ context.dicom.series.any('0008','0060') }} == 'CR' OR {{ context.dicom.series.any('0008','0060') }} == 'DX'",
    "({{ context.executions.a.result.score }} > 0.5) AND {{ context.workflow.name }} != NULL",
])
def test_the_condition_checker_accepts_the_documented_syntax(condition):
    check_condition(condition, {"a"})


@pytest.mark.parametrize("condition", [
    "{{ context.dicom.series.all(0018,0015) }} == 'CHEST'",  # unquoted group/element: no key
    "{{ context.dicom.series.first('0018','0015') }} == 'CHEST'",  # no such function
    "{{ context.executions.missing.status }} == 'Succeeded'",  # no such task
    "{{ context.dicom.series.all('0018','0015') }} = 'CHEST'",  # no such operator
    "{{ context.dicom.series.all('0018','0015') }} == 'CHEST' AND",
    "({{ context.dicom.series.all('0018','0015') }} == 'CHEST'",
    "{{ context.workflow.name }} > 'x'",  # numeric operator without a number
])
def test_the_condition_checker_rejects_what_the_wm_cannot_use(condition):
    with pytest.raises(ValueError):
        check_condition(condition, {"a"})


# --- the examples -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_required_fields_ids_and_task_types(name):
    # WorkflowValidator.cs: ValidateWorkflowSpecAsync, ValidateInformaticsGateawayAsync, ValidateTasks,
    # TaskTypeSpecificValidation, ValidateInputs, ValidateTaskOutputArtifacts
    wf = load(name)
    assert wf.get("name", "").strip() and wf.get("version", "").strip()
    ig = wf["informatics_gateway"]
    assert AE_TITLE.match(ig["ae_title"]), ig["ae_title"]
    for origin in ig.get("data_origins", []):
        assert AE_TITLE.match(origin), f"data origin {origin!r} is compared with a calling AE title"
    assert wf["tasks"], "a workflow needs tasks"
    ids = [t["id"] for t in wf["tasks"]]
    assert len(ids) == len(set(ids)), "duplicate task id"
    for task in wf["tasks"]:
        assert TASK_ID.match(task["id"]), task["id"]
        assert task["type"].lower() in VALID_TASK_TYPES, task["type"]
        if task["type"] != "router":
            inputs = task.get("artifacts", {}).get("input", [])
            assert inputs, f"{task['id']}: every task but a router needs input artifacts"
            assert all(a.get("name", "").strip() and a.get("value", "").strip() for a in inputs)
        outputs = [a["name"] for a in task.get("artifacts", {}).get("output", [])]
        assert len(outputs) == len(set(outputs)), f"{task['id']}: output names must be unique"


@pytest.mark.parametrize("name", NAMES)
def test_task_destinations_form_a_tree_from_the_first_task(name):
    # WorkflowValidator.cs: ValidateTasks (no destination back to the first task, no task the
    # destination of two), DetectUnreferencedTasks; WorkflowExecuterService.cs CreateTaskDestinations
    # skips (logs TaskNotFoundInWorkflow) a destination that names no task
    wf = load(name)
    ids = set(tasks_by_id(wf))
    first = wf["tasks"][0]["id"]
    destinations = [d["name"] for t in wf["tasks"] for d in t.get("task_destinations", [])]
    assert set(destinations) <= ids, f"unknown task destinations: {set(destinations) - ids}"
    assert first not in destinations
    assert len(destinations) == len(set(destinations)), "converging task destinations"
    assert ids - {first} == set(destinations), "tasks no other task leads to"


@pytest.mark.parametrize("name", NAMES)
def test_export_destinations_are_declared_for_the_gateway(name):
    # WorkflowValidator.cs: ValidateExportTask, CheckDestinationInMigDestinations; at run time
    # WorkflowExecuterService.GetDicomExports exports nothing when one is not declared
    wf = load(name)
    declared = set(wf["informatics_gateway"].get("export_destinations") or [])
    for task in wf["tasks"]:
        names = [d["name"] for d in task.get("export_destinations", [])]
        if task["type"] == "export":
            assert names, f"{task['id']}: an export task needs a destination"
        assert len(names) == len(set(names)), f"{task['id']}: duplicate destinations"
        assert set(names) <= declared, f"{task['id']}: {set(names) - declared} not in informatics_gateway"


@pytest.mark.parametrize("name", NAMES)
def test_input_artifacts_are_values_the_artifact_mapper_resolves_whole(name):
    wf = load(name)
    tasks = tasks_by_id(wf)
    for task in wf["tasks"]:
        for artifact in task.get("artifacts", {}).get("input", []):
            value = artifact["value"]
            if value == INPUT_DICOM:
                continue
            m = EXECUTION_ARTIFACT.match(value)
            assert m, f"{task['id']}: {value!r} (a suffix after }}}} is dropped by ArtifactMapper)"
            source, output = m.groups()
            assert source in upstream(wf, task["id"]), f"{task['id']}: {source} does not run before it"
            outputs = {a["name"] for a in tasks[source].get("artifacts", {}).get("output", [])}
            assert output in outputs, f"{task['id']}: {source} has no output artifact {output}"


@pytest.mark.parametrize("name", NAMES)
def test_no_mandatory_input_shares_a_name_with_the_outputs_of_the_task_before_it(name):
    # WorkflowExecuterService.cs: CreateTaskDestinations -> GetTasksInput matches a destination's
    # input artifacts to the previous task's outputs *by name* and, after a task update (no received
    # artifact types), skips the destination when a mandatory one matched (TaskIsMissingRequiredInputArtifacts)
    wf = load(name)
    tasks = tasks_by_id(wf)
    for task in wf["tasks"]:
        outputs = {a["name"] for a in task.get("artifacts", {}).get("output", [])}
        for dest in task.get("task_destinations", []):
            for artifact in tasks[dest["name"]].get("artifacts", {}).get("input", []):
                assert not (artifact.get("mandatory", True) and artifact["name"] in outputs), \
                    f"{dest['name']}: input {artifact['name']} would never be dispatched"


def docker_tasks() -> list[pytest.param]:
    return [pytest.param(name, t["id"], id=f"{name}:{t['id']}") for name in NAMES for t in load(name)["tasks"]
            if t["type"] == "docker"]


def test_there_is_a_docker_task_to_check():
    assert docker_tasks()


@pytest.mark.parametrize("name,task_id", docker_tasks())
def test_docker_args_have_what_the_docker_plugin_requires(name, task_id):
    task = tasks_by_id(load(name))[task_id]
    args = task["args"]
    assert DOCKER_REQUIRED <= set(args), f"missing: {sorted(DOCKER_REQUIRED - set(args))}"
    # DockerPlugin.ValidateEvent: Uri.IsWellFormedUriString(server_url, UriKind.Absolute)
    assert urlparse(args["server_url"]).scheme, args["server_url"]
    # DockerPlugin.Initialize: int.TryParse, else 5 minutes
    assert re.fullmatch(r"\d+", args.get("task_timeout_minutes", "5"))
    # every args value is passed as a string (TaskDispatchEvent.TaskPluginArguments: string -> string)
    assert all(isinstance(v, str) for v in args.values())
    assert PurePosixPath(args["temp_storage_container_path"]).is_absolute()
    assert args["command"] == "python3 /opt/holoscan/app"  # the MAP's entry point (app/map_context.py)


@pytest.mark.parametrize("name,task_id", docker_tasks())
def test_every_docker_mount_has_a_container_path_and_the_app_is_told_it(name, task_id):
    # DockerPlugin.ValidateStorageMappings: every input and output storage name must be an args key
    # (its value is the mount target: SetupInputs/SetupOutputs). The input storage name is the
    # artifact's name for context.input.dicom, and the *referenced output's* name for
    # context.executions...artifacts (ArtifactMapper returns that task's output KeyValuePair).
    task = tasks_by_id(load(name))[task_id]
    args = task["args"]
    names = [a["name"] for a in task["artifacts"].get("output", [])]
    for artifact in task["artifacts"].get("input", []):
        m = EXECUTION_ARTIFACT.match(artifact["value"])
        names.append(m.group(2) if m else artifact["name"])
    targets = []
    for n in names:
        assert n in args, f"{n}: no container path in args (the plugin refuses the task)"
        assert n.startswith(ENV_PREFIX), f"{n}: name it env_X so the app is told where it is mounted"
        targets.append(PurePosixPath(args[n]))
    assert all(t.is_absolute() for t in targets)
    for i, a in enumerate(targets):
        for b in targets[i + 1:]:
            assert a != b and a not in b.parents and b not in a.parents, f"mounts {a} and {b} overlap"


def _env_read_by_app() -> set[str]:
    """The environment variables the app reads: ``BODYPART_<KEY>`` of every ``Option("<key>", ...)``
    in app/settings.py, any ``BODYPART_*`` named there literally, and the ``HOLOSCAN_*`` paths app/app.py reads."""
    source = (ROOT / "app" / "settings.py").read_text()
    names = set(re.findall(r"\bBODYPART_[A-Z0-9_]+\b", source))
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Option" and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(f"BODYPART_{node.args[0].value.upper()}")
    names |= set(re.findall(r"\bHOLOSCAN_(?:INPUT|OUTPUT|MODEL)_PATH\b", (ROOT / "app" / "app.py").read_text()))
    return names


@pytest.mark.parametrize("name,task_id", docker_tasks())
def test_the_app_reads_every_variable_the_workflow_sets(name, task_id):
    task = tasks_by_id(load(name))[task_id]
    env = {k[len(ENV_PREFIX):] for k in task["args"] if k.startswith(ENV_PREFIX)}
    assert {"BODYPART_SR_FOLDER", "BODYPART_DICOM_FOLDER", "HOLOSCAN_OUTPUT_PATH"} <= env
    unread = env - _env_read_by_app()
    assert not unread, f"set by the workflow, read by nothing in the app: {sorted(unread)}"


def test_the_reports_and_the_corrected_copies_leave_by_their_own_exports():
    wf = load("bodypart-identify.json")
    tasks = tasks_by_id(wf)
    sent = {}
    for task in wf["tasks"]:
        if task["type"] == "export":
            [artifact] = task["artifacts"]["input"]
            sent[EXECUTION_ARTIFACT.match(artifact["value"]).group(2)] = {d["name"] for d in task["export_destinations"]}
    assert sent == {"env_BODYPART_SR_FOLDER": {"PACS"}, "env_BODYPART_DICOM_FOLDER": {"ROUTING"}}
    outputs = {a["name"]: a.get("mandatory", True) for a in tasks["identify"]["artifacts"]["output"]}
    # corrected copies only for confident results: a study may have none (not mandatory)
    assert outputs == {"env_HOLOSCAN_OUTPUT_PATH": True, "env_BODYPART_SR_FOLDER": True, "env_BODYPART_DICOM_FOLDER": False}
    assert "BODYPART_CORRECTED=confident" in wf["description"]


@pytest.mark.parametrize("name", NAMES)
def test_conditions_parse_in_the_wm_syntax(name):
    wf = load(name)
    ids = set(tasks_by_id(wf))
    for task in wf["tasks"]:
        for dest in task.get("task_destinations", []):
            for condition in dest.get("conditions", []):
                check_condition(condition, ids)


def test_the_chest_route_reads_the_corrected_body_part_and_takes_data_from_the_gateway_scu():
    wf = load("bodypart-route-chest.json")
    identify = load("bodypart-identify.json")
    # the corrected copies come back through the gateway's own SCU: its calling AE title
    # (Informatics Gateway src/Configuration/ScuConfiguration.cs: AeTitle = "MONAISCU") is the
    # payload's source (ScpServiceInternal -> DataOrigin.Source = CallingAE), which the WM compares
    # with data_origins (src/WorkflowManager/Database/Repositories/WorkflowRepository.cs:
    # GetWorkflowsForWorkflowRequestAsync)
    assert wf["informatics_gateway"]["data_origins"] == ["MONAISCU"]
    assert wf["informatics_gateway"]["ae_title"] in identify["informatics_gateway"]["export_destinations"]
    [condition] = [c for t in wf["tasks"] for d in t.get("task_destinations", []) for c in d.get("conditions", [])]
    assert "context.dicom.series.all('0018','0015')" in condition  # Body Part Examined
    assert "0020,000E" in (WORKFLOWS / "README.md").read_text(), "the README names the series grouping the route needs"
