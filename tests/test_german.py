"""German credit through the CLI: the default steer converges and its result audits IDEAL."""

import json

import pytest

from fairsteer.cli import main

pytest.importorskip("skfair")


def test_german_credit_default_steer_converges_and_audits_ideal(tmp_path, capsys):
    from fairsteer.data.german import main as write_german

    data = tmp_path / "german.csv"
    assert write_german(["-o", str(data)]) == 0
    out = tmp_path / "out.csv"
    args = ["steer", data, "--group", "sex", "--label", "credit", "-o", out, "--artifacts"]
    assert main([str(a) for a in args]) == 0
    capsys.readouterr()
    solution = json.loads((tmp_path / "out.solution.json").read_text())
    assert solution["diagnostics"]["converged"]
    report = json.loads((tmp_path / "out.audit.json").read_text())
    assert not report["before"]["is_ideal"]
    assert report["after"]["is_ideal"] and report["after"]["nearest_ideal_converged"]
    # all subgroups on the fitted model: converged, IDEAL when audited
    assert (
        main(
            [
                "solve",
                str(tmp_path / "out.model.json"),
                "--method",
                "all-subgroups",
                "-o",
                str(tmp_path / "all.json"),
            ]
        )
        == 0
    )
    all_subgroups = json.loads((tmp_path / "all.json").read_text())
    assert all_subgroups["diagnostics"]["converged"]
    assert all_subgroups["kl"] <= solution["kl"]
    capsys.readouterr()
    assert main(["audit", str(tmp_path / "all.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["is_ideal"]
