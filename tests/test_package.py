"""The core imports with numpy and scipy only."""

import subprocess
import sys


def test_core_imports_without_optional_worlds():
    code = (
        "import sys\n"
        "import fairsteer, fairsteer.cli\n"
        "import numpy as np\n"
        "rng = np.random.default_rng(0)\n"
        "X = rng.normal(size=(400, 2)); y = rng.integers(0, 2, 400); g = rng.integers(0, 2, 400)\n"
        "m = fairsteer.fit_model(X, y, g)\n"
        "s = fairsteer.solve(m, 'all-subgroups')\n"
        "fairsteer.SteeringMaps.from_solution(m, s).steer(X, y, g)\n"
        "fairsteer.audit(m)\n"
        "heavy = ('torch', 'pandas', 'sklearn', 'matplotlib', 'polars', 'pyarrow')\n"
        "print(sorted(k for k in heavy if k in sys.modules) or 'ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_import_leaves_slow_scipy_modules_to_their_users():
    # scipy.optimize and scipy.stats take ~0.6 s to import, more than the rest of
    # `fairsteer fit` on a small file; only the functions that use them import them.
    code = (
        "import sys\n"
        "import fairsteer, fairsteer.cli\n"
        "fairsteer.cli.build_parser()\n"
        "slow = ('scipy.optimize', 'scipy.stats')\n"
        "print(sorted(k for k in slow if k in sys.modules) or 'ok')\n"
        "import numpy as np\n"
        "rng = np.random.default_rng(0)\n"
        "X = rng.normal(size=(400, 2)); y = rng.integers(0, 2, 400); g = rng.integers(0, 2, 400)\n"
        "fairsteer.audit(fairsteer.fit_model(X, y, g, covariance='shared'))\n"
        "print('scipy.optimize' in sys.modules)\n"  # the closed-form audit's maximiser
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["ok", "True"]
