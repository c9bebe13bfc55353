"""The examples work as documented, after the README's base install.

Recipes: every examples/*.yaml documents one offline try-out on a line of its own, in one format:

    # Try it offline: wb COMMAND --config examples/NAME.yaml [flags]

`test_recipe_try_out` runs that line word for word through the installed `wb` script, in a subprocess started
at the repository root, with `--max_steps 2 --output_dir TMP` appended (argparse keeps the last value of a
repeated flag). What it checks:
  * the command exits 0 and writes args.json and checkpoint-2, from a --miniature model, with report_to none;
  * it needs no package that only an optional extra brings: a sitecustomize.py on PYTHONPATH hides every
    distribution in the closure of swiftlike's extras (qlora, tensorboard, wandb, ..., test) that the base
    dependencies do not also bring — their modules cannot be imported and importlib.metadata does not list
    them, as if they were not installed, although this test environment has them (`test_hiding_works`);
  * it needs no network and no downloaded model: HF_HUB_OFFLINE=1, an empty HF_HOME and its own empty
    encoding cache. (The selected try-outs run two at a time to keep the file short.)
Not checked: that the base install itself resolves (CI's README commands do that), or other Python versions.

Notebook: examples/quickstart.ipynb runs under nbclient in a python3 kernel started in examples/ (as Jupyter and
`jupyter nbconvert --execute` start it): every cell must run, the loss must fall by half and the answer name Wren.
Started at the repository root, its first cell (which names every path) runs too, shortened to 2 steps. Both run
a copy of examples/ (the notebook and data/) in a temporary repository-shaped folder, so that the notebook's
runs/notebook lands there and not in the working tree.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "examples").glob("*.yaml"))
TRY_OUT = re.compile(r"^# Try it offline: (.+)$", re.M)
COMMANDS = ("sft", "pt", "dpo", "kto", "rm", "grpo")
ENVIRONMENT = {"pip", "setuptools", "wheel"}  # part of a fresh virtual environment, not of an extra


def try_out_line(recipe: Path) -> list[str]:
    """The recipe's documented try-out as argv; fails unless there is exactly one in the canonical format."""
    found = TRY_OUT.findall(recipe.read_text(encoding="utf-8"))
    assert len(found) == 1, (f"{recipe.name}: expected one line '# Try it offline: wb COMMAND --config "
                             f"examples/{recipe.name} ...', found {len(found)}")
    argv = shlex.split(found[0])
    assert argv[0] == "wb" and argv[1] in COMMANDS, f"{recipe.name}: not a wb training command: {found[0]}"
    assert argv[2:4] == ["--config", f"examples/{recipe.name}"], f"{recipe.name}: try-out runs another recipe"
    return argv


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_documents_an_offline_try_out(recipe):
    argv = try_out_line(recipe)
    assert "--miniature" in argv or yaml.safe_load(recipe.read_text()).get("miniature") is True, \
        f"{recipe.name}: an offline try-out needs --miniature"


# -- hiding what the optional extras bring ----------------------------------------------------------------
def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _swiftlike_requirements() -> list[str]:
    try:
        import tomllib  # the checkout's pyproject.toml: current even when the editable install's metadata is not
    except ImportError:  # Python 3.10
        return metadata.requires("swiftlike") or []
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return list(project["dependencies"]) + [f"{r}; extra == {extra!r}" for extra, reqs in
                                            project["optional-dependencies"].items() for r in reqs]


def _closure(requirements: list[str], extras: tuple[str, ...]) -> set[str]:
    """Installed distributions that `requirements` (evaluated for `extras`) bring, transitively."""
    from packaging.requirements import Requirement

    def wanted(reqs, extra):
        return [r for r in map(Requirement, reqs) if r.marker is None or r.marker.evaluate({"extra": extra})]

    todo = [r for extra in extras for r in wanted(requirements, extra)]
    names, seen = set(), set()
    while todo:
        req = todo.pop()
        for extra in ("", *req.extras):
            key = (_canon(req.name), extra)
            if key in seen:
                continue
            seen.add(key)
            try:
                reqs = metadata.requires(req.name) or []
            except metadata.PackageNotFoundError:
                continue  # not installed here (a dependency for another platform)
            names.add(key[0])
            todo += wanted(reqs, extra)
    return names


def optional_distributions() -> set[str]:
    reqs = _swiftlike_requirements()
    extras = {m.group(1) for r in reqs for m in [re.search(r"extra == ['\"]([^'\"]+)", r)] if m}
    optional = _closure(reqs, tuple(sorted(extras))) - _closure(reqs, ("",)) - ENVIRONMENT
    # what other software on this machine needs stays visible (e.g. boto3, which accelerate imports when present,
    # needs urllib3): a fresh install without those has nothing of it to hide either
    others = {_canon(d.metadata["Name"] or "") for d in metadata.distributions()} - optional - {"swiftlike"}
    return optional - _closure(sorted(others), ("",))


SITECUSTOMIZE = '''\
"""Written by tests/test_examples.py: hide the optional extras' distributions as if they were not installed."""
import sys
from importlib.machinery import PathFinder

_DISTS = {dists!r}
_MODULES = {modules!r}


class _WithoutExtras(PathFinder):
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname.partition(".")[0] in _MODULES:
            return None
        return super().find_spec(fullname, path, target)

    @classmethod
    def find_distributions(cls, *args, **kwargs):
        import re
        return (d for d in super().find_distributions(*args, **kwargs)
                if re.sub(r"[-_.]+", "-", d.metadata["Name"] or "").lower() not in _DISTS)


sys.meta_path[:] = [_WithoutExtras if f is PathFinder else f for f in sys.meta_path]
'''


@pytest.fixture(scope="module")
def base_env(tmp_path_factory):
    """Environment variables for a subprocess that sees only the base install, offline."""
    dists = optional_distributions()
    modules = sorted(m for m, owners in metadata.packages_distributions().items()
                     if all(_canon(d) in dists for d in owners))
    site = tmp_path_factory.mktemp("without-extras")
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(dists=sorted(dists), modules=modules))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path_factory.mktemp("hf-home")),
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join(
                   [str(site)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    return env, modules


def test_hiding_works(base_env):
    env, modules = base_env
    for name in ("tensorboard", "bitsandbytes", "av"):  # the test extra brings them (av: conftest.needs_av)
        assert name in modules
    code = textwrap.dedent(f"""
        import importlib, importlib.metadata as md, importlib.util
        hidden = {modules!r}
        for name in hidden:
            try:
                importlib.import_module(name)
            except ImportError:
                continue
            raise SystemExit(f"{{name}} imports")
        assert importlib.util.find_spec("tensorboard") is None
        for dist in ("tensorboard", "bitsandbytes", "trl"):
            try:
                md.version(dist)
            except md.PackageNotFoundError:
                continue
            raise SystemExit(f"{{dist}} has metadata")
        import swiftlike.cli.main, yaml, transformers.utils  # the base install still imports
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def _wb() -> str:
    script = Path(sys.executable).parent / ("wb.exe" if os.name == "nt" else "wb")
    found = str(script) if script.is_file() else shutil.which("wb")
    assert found, "the wb script is not installed: pip install -e ."
    return found


def _start(recipe: Path, env: dict, pool: ThreadPoolExecutor, tmp: Path):
    argv = [_wb(), *try_out_line(recipe)[1:], "--max_steps", "2", "--output_dir", str(tmp / "out")]
    env = dict(env, WB_CACHE_DIR=str(tmp / "cache"))  # a first run's cold cache, shared with no concurrent run
    return argv, tmp / "out", pool.submit(subprocess.run, argv, cwd=ROOT, env=env, capture_output=True, text=True,
                                          timeout=300)


@pytest.fixture(scope="module")
def try_outs(request, base_env, tmp_path_factory):
    """The selected recipes' try-outs, started two at a time: a run is mostly imports, and CI has 2 cores."""
    env, _ = base_env
    selected = [item.callspec.params["recipe"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_recipe_try_out"]
    pool, runs = ThreadPoolExecutor(max_workers=2), {}
    try:
        for recipe in selected:
            try:
                runs[recipe] = _start(recipe, env, pool, tmp_path_factory.mktemp(recipe.stem))
            except AssertionError as e:  # no usable try-out line, or no wb script: its test reports it
                runs[recipe] = e
        yield runs
    finally:
        pool.shutdown(cancel_futures=True)  # after `pytest -x`, start no more of them


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_try_out(recipe, try_outs):
    try_out_line(recipe)
    if isinstance(try_outs[recipe], AssertionError):
        raise try_outs[recipe]
    argv, out, future = try_outs[recipe]
    run = future.result()
    assert run.returncode == 0, f"{shlex.join(argv)}\n{(run.stdout + run.stderr)[-4000:]}"
    args = json.loads((out / "args.json").read_text())
    assert (out / "checkpoint-2").is_dir()
    assert args["miniature"] is True and args["report_to"] == "none" and args["max_steps"] == 2


# -- the notebook ---------------------------------------------------------------------------------------
def _notebook(tmp_path):
    """The notebook, read from a copy of examples/ (notebook and data/) in a repository-shaped temporary folder."""
    try:
        import nbformat
    except ImportError as e:
        pytest.fail(f"{e}: the test extra brings it (pip install -e '.[test]')")
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "examples" / "data", repo / "examples" / "data")
    shutil.copy(ROOT / "examples" / "quickstart.ipynb", repo / "examples")
    return repo, nbformat.read(repo / "examples" / "quickstart.ipynb", as_version=4)


def _execute(nb, cwd: Path):
    """Run every cell in a fresh python3 kernel started in `cwd`; a cell that raises fails the test with its error."""
    import nbclient

    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(re.sub(r"\x1b\[[0-9;]*m", "", str(e)), pytrace=False)
    return [c for c in nb.cells if c.cell_type == "code"]


def _printed(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout")


@pytest.mark.slow
def test_quickstart_notebook(tmp_path):
    """The whole notebook, started in examples/ as Jupyter and nbconvert start it: it learns the example data."""
    repo, nb = _notebook(tmp_path)
    code = _execute(nb, repo / "examples")
    loss = re.search(r"^loss ([\d.]+) -> ([\d.]+)$", _printed(code[0]), re.M)
    assert loss and float(loss[2]) < float(loss[1]) / 2, _printed(code[0])  # it learned
    assert "Wren" in _printed(code[-1]), _printed(code[-1])  # what the example data taught it
    assert (repo / "runs" / "notebook" / "checkpoint-60").is_dir()


@pytest.mark.slow
def test_quickstart_notebook_from_repository_root(tmp_path):
    """Started at the repository root, the first cell (the one that names every path) finds the data and writes
    to the same runs/notebook; run with max_steps=2 instead of 60 to keep it short."""
    repo, nb = _notebook(tmp_path)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert first.source.count("max_steps=60") == 1
    first.source = first.source.replace("max_steps=60", "max_steps=2")
    nb.cells = [first]
    _execute(nb, repo)
    assert (repo / "runs" / "notebook" / "checkpoint-2").is_dir()
