"""Design-space sweeps: planning and its errors, identical tables on every executor,
failing points, and kill/resume durability."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pimsim.sweep as sweeps
from pimsim.cli import main
from pimsim.errors import PimsimError

ROOT = Path(__file__).resolve().parents[1]

# `pimsim sweep` through the real entry point (the list append is a no-op once the
# subcommand is registered in pimsim.cli.SUBCOMMANDS)
_ENTRY = ("import sys; from pimsim import cli; "
          "'sweep' in cli.SUBCOMMANDS or cli.SUBCOMMANDS.append('sweep'); sys.exit(cli.main())")


@pytest.fixture(autouse=True)
def _sweep_command(monkeypatch):
    import pimsim.cli

    if "sweep" not in pimsim.cli.SUBCOMMANDS:
        monkeypatch.setattr(pimsim.cli, "SUBCOMMANDS", [*pimsim.cli.SUBCOMMANDS, "sweep"])

#: 12 cheap points: GPT-2 small, one decode token after a 4-token context.
GRID = """\
name: grid12
models: [gpt2-small]
prompt: 4
tokens: 1
axes:
  asic.clock_MHz: [500, 1000, 2000]
  refresh.policy: ["off", ab]
  pim.mac_lanes: [8, 16]
"""


def _files(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in (sweeps.TABLE_CSV, sweeps.TABLE_JSONL)}


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sweep") / "grid12.yaml"
    path.write_text(GRID)
    return path


@pytest.fixture(scope="module")
def reference(grid_file, tmp_path_factory) -> dict[str, bytes]:
    """The grid run in this process (1 worker), uninterrupted."""
    out = tmp_path_factory.mktemp("ref")
    result = sweeps.sweep(grid_file, workers=1, out=out)
    assert result.complete and len(result.ok) == 12, result.failed
    return _files(out)


# ----------------------------------------------------------------------------- planning

@pytest.mark.unit
def test_grid_expands_in_document_order(grid_file):
    plan = sweeps.plan(grid_file)
    assert len(plan.points) == 12
    assert plan.axes == ("asic.clock_MHz", "refresh.policy", "pim.mac_lanes")
    first, last = plan.points[0], plan.points[-1]
    assert first.overrides == ("asic.clock_MHz=500", "refresh.policy=off", "pim.mac_lanes=8")
    assert last.overrides == ("asic.clock_MHz=2000", "refresh.policy=ab", "pim.mac_lanes=16")
    assert len({p.key for p in plan.points}) == 12
    assert len({p.spec_digest for p in plan.points}) == 12
    assert plan.digest == sweeps.plan(grid_file).digest


@pytest.mark.unit
def test_random_sampling_is_seeded_and_ranges_expand():
    doc = {"sampling": "random", "samples": 20, "seed": 3, "prompt": 4,
           "axes": {"asic.clock_MHz": {"low": 100, "high": 2000, "scale": "log"},
                    "organization.channels": [4, 8, 16], "strategy": ["pim-gpt", "column"]},
           "points": [{}]}
    a, b = sweeps.plan(doc), sweeps.plan(doc)
    assert a.digest == b.digest and len(a.points) == 21
    assert a.digest != sweeps.plan({**doc, "seed": 4}).digest
    clocks = [dict(p.values)["asic.clock_MHz"] for p in a.points[:20]]
    assert all(isinstance(c, int) and 100 <= c <= 2000 for c in clocks)
    assert a.points[-1].overrides == () and a.points[-1].strategy == "pim-gpt"
    grid = sweeps.plan({"axes": {"asic.clock_MHz": {"low": 100, "high": 1000, "num": 3, "scale": "log"}}})
    assert [dict(p.values)["asic.clock_MHz"] for p in grid.points] == [100, 316, 1000]


@pytest.mark.unit
@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_example_sweep_files_plan(path):
    plan = sweeps.plan(path)
    assert plan.points and plan.name == path.stem


BAD = [
    ({"modles": ["gpt2-small"]}, "modles: unknown key"),
    ({"models": ["gpt9"]}, "models[0]: unknown model 'gpt9'"),
    ({"axes": {"strategy": ["pim-gpt", "diagonal"]}}, "axes.strategy[1]: unknown mapping strategy 'diagonal'"),
    ({"axes": {"organization.chanels": [4]}}, "organization.chanels=4"),
    ({"axes": {"organization.channels": [8, 0]}}, "organization.channels=0"),
    ({"axes": {"pim.mac_lanes": [3]}}, "pim.mac_lanes=3"),
    ({"axes": {"asic.clock_MHz": "fast"}}, "axes.asic.clock_MHz: expected a non-empty list"),
    ({"axes": {"tokens": [0]}}, "axes.tokens[0]: expected a positive number"),
    ({"axes": {"asic.clock_MHz": {"low": 1, "high": 2}}}, "axes.asic.clock_MHz.num"),
    ({"sampling": "random"}, "samples: random sampling needs"),
    ({"prompt": -1}, "prompt: expected a non-negative"),
    ({"preset": "pim-xyz"}, "preset: unknown preset 'pim-xyz'"),
    ({"set": ["refresh.policy=sometimes"]}, "set: --set refresh.policy=sometimes"),
    # the seed is checked with grid sampling too (only random sampling uses it)
    ({"seed": "abc"}, "seed: expected an integer, got 'abc'"),
    ({"sampling": "random", "samples": 2, "seed": 1.5}, "seed: expected an integer, got 1.5"),
    ({"name": [1]}, "name: expected a non-empty one-line string, got [1]"),
    ({"name": "two\nlines"}, "name: expected a non-empty one-line string, got 'two\\nlines'"),
    ({"description": {"a": 1}}, "description: expected a string, got {'a': 1}"),
    # a list, mapping or true/false where one value is expected
    ({"strategy": ["pim-gpt", "column"]}, "strategy: expected one value, got ['pim-gpt', 'column']"),
    ({"prompt": [4, 8]}, "prompt: expected one value, got [4, 8]"),
    ({"tokens": {"a": 1}}, "tokens: expected one value, got {'a': 1}"),
    ({"points": [{"strategy": ["pim-gpt"]}]}, "points[0].strategy: expected one mapping strategy name, "
                                              "got ['pim-gpt']"),
    ({"axes": {"strategy": [True]}}, "axes.strategy[0]: expected one mapping strategy name, got True"),
    ({"points": [{"model": ["gpt2-small"]}]}, "points[0].model: expected a model name or trace .json "
                                              "file, got ['gpt2-small']"),
    ({"models": [["gpt2-small"]]}, "models[0]: expected a model name or trace .json file"),
    ({"sampling": ["grid"]}, "sampling: expected grid or random, got ['grid']"),
    ({"set": {"asic.clock_MHz": [500]}}, "set.asic.clock_MHz: expected a scalar (a string, number or "
                                         "true/false), got [500]"),
    ({"set": {"asic.clock_MHz": None}}, "set.asic.clock_MHz: expected a scalar"),
    ({"axes": {"asic.clock_MHz": [object]}}, "axes.asic.clock_MHz[0]: expected a scalar"),
    ({"points": [{"asic.clock_MHz": {"a": 1}}]}, "points[0].asic.clock_MHz: expected a preset key with "
                                                 "a scalar value, got {'a': 1}"),
    ({"axes": {"asic.clock_MHz": {"low": 1, "high": 2, "num": 2, "scale": ["log"]}}},
     "axes.asic.clock_MHz.scale: expected linear or log, got ['log']"),
    ({"axes": {"asic.clock_MHz": {"low": 1, "high": 2, "num": 2, 3: 4, "x": 5}}},
     "axes.asic.clock_MHz.3: unknown range key"),
    ({"axes": False}, "axes: expected a mapping of key: values, got False"),
    ({"points": 0}, "points: expected a list of mappings, got 0"),
    # range bounds must be finite (not reported as the point 'asic.clock_MHz=nan')
    ({"axes": {"asic.clock_MHz": {"low": 100, "high": float("inf"), "num": 2}}},
     "axes.asic.clock_MHz.high: expected a finite number, got inf"),
    ({"axes": {"asic.clock_MHz": {"low": float("-inf"), "high": 100, "num": 2}}},
     "axes.asic.clock_MHz.low: expected a finite number, got -inf"),
    ({"axes": {"asic.clock_MHz": {"low": float("nan"), "high": 100}}, "sampling": "random", "samples": 2},
     "axes.asic.clock_MHz.low: expected a finite number, got nan"),
    ({"axes": {"asic.clock_MHz": {"low": 100, "high": 10 ** 400, "num": 2}}},
     "axes.asic.clock_MHz.high: expected a finite number, got 1000"),
    ({"axes": {"asic.clock_MHz": {"low": -1e308, "high": 1e308, "num": 3}}},
     "axes.asic.clock_MHz: the range from -1e+308 to 1e+308 is too wide to sample"),
    # at most MAX_POINTS points, refused before any point is resolved
    ({"axes": {"asic.clock_MHz": {"low": 100, "high": 2000, "num": 10 ** 12}}},
     "axes.asic.clock_MHz.num: 1000000000000 values; a sweep has at most 1,000,000 points"),
    ({"sampling": "random", "samples": 10 ** 10, "axes": {"asic.clock_MHz": {"low": 100, "high": 2000}}},
     "samples: 10000000000 points (10000000000 samples x 1 model); a sweep has at most 1,000,000 points"),
    ({"models": ["gpt2-small", "gpt2-medium"], "axes": {"asic.clock_MHz": list(range(1000)),
                                                        "pim.clock_MHz": {"low": 1, "high": 2000, "num": 1000}}},
     "axes: 2000000 points (2 models x 1000 asic.clock_MHz x 1000 pim.clock_MHz); a sweep has at most "
     "1,000,000 points"),
    ({"axes": {"asic.clock_MHz": {"low": 100, "high": 2000, "num": 10 ** 6}}, "points": [{}]},
     "points: 1000001 points (1 model x 1000000 asic.clock_MHz + 1 listed points)"),
]


@pytest.mark.unit
@pytest.mark.parametrize("doc,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_sweep_documents_name_the_key_and_value(doc, message):
    with pytest.raises(PimsimError) as info:
        sweeps.plan(doc)
    text = str(info.value)
    assert message in text and "\n" not in text and text.startswith("sweep: ")


@pytest.mark.e2e
def test_cli_bad_file_exits_2_without_output(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(GRID.replace("pim.mac_lanes: [8, 16]", "pim.mac_lanes: [8, 5]"))
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pimsim: error: {path}: axes (") and "pim.mac_lanes=5" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not out.exists()


def _cli_error(capsys) -> str:
    """The one line `pimsim sweep` wrote to stderr (and nothing else: no traceback)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.e2e
def test_cli_sweep_file_not_utf8_or_with_a_key_twice_is_one_line_error(tmp_path, capsys):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: x\n\xff\xfe\x00garbage\n")
    twice = tmp_path / "twice.yaml"
    twice.write_text(GRID.replace("  pim.mac_lanes: [8, 16]\n",
                                  "  pim.mac_lanes: [8, 16]\n  asic.clock_MHz: [4000]\n"))
    out = tmp_path / "out"
    assert main(["sweep", str(binary), "--out", str(out)]) == 2
    assert _cli_error(capsys) == f"pimsim: error: {binary}: not UTF-8 text (byte 0xff at offset 8)"
    assert main(["sweep", str(twice), "--out", str(out)]) == 2
    assert _cli_error(capsys) == (f"pimsim: error: {twice}: malformed YAML at line 9: key "
                                  f"'asic.clock_MHz' given twice (first at line 6)")
    assert not out.exists()


@pytest.mark.unit
def test_sweep_size_is_checked_before_any_point_is_resolved(monkeypatch):
    import pimsim.config

    loaded = []
    real = pimsim.config.load_preset

    def counted(preset, overrides=()):
        loaded.append(list(overrides))
        return real(preset, overrides)

    huge = {"axes": {"asic.clock_MHz": {"low": 100, "high": 2000, "num": sweeps.MAX_POINTS + 1}}}
    monkeypatch.setattr(pimsim.config, "load_preset", counted)
    start = time.monotonic()
    with pytest.raises(PimsimError, match=r"axes.asic.clock_MHz.num: 1000001 values; a sweep has at most"):
        sweeps.plan(huge)
    assert time.monotonic() - start < 5
    assert loaded == [[]]  # only the base preset (checking `set`), no point


@pytest.mark.e2e
@pytest.mark.parametrize("text,message", [
    ("strategy: [pim-gpt, column]\n", "strategy: expected one value, got ['pim-gpt', 'column']"),
    ("points: [{strategy: [pim-gpt]}]\n", "points[0].strategy: expected one mapping strategy name, "
                                          "got ['pim-gpt']"),
    ("axes: {asic.clock_MHz: {low: 100, high: .inf, num: 2}}\n",
     "axes.asic.clock_MHz.high: expected a finite number, got inf"),
    ("sampling: random\nsamples: 10000000000\n", "samples: 10000000000 points"),
], ids=["strategy-list", "point-strategy-list", "inf-bound", "too-many"])
def test_cli_bad_value_types_exit_2_with_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "s.yaml"
    path.write_text("models: [gpt2-small]\nprompt: 1\ntokens: 1\n" + text)
    out = tmp_path / "D"
    assert main(["sweep", str(path), "--out", str(out)]) == 2
    err = _cli_error(capsys)
    assert err.startswith(f"pimsim: error: {path}: {message}"), err
    assert not out.exists()


@pytest.mark.unit
def test_numpy_scalars_are_their_python_values():
    np = pytest.importorskip("numpy")
    plain = {"prompt": 4, "set": {"link.latency_ps": 2000},
             "axes": {"asic.clock_MHz": [500, 1000], "pim.clock_MHz": {"low": 250, "high": 2000, "num": 2},
                      "prompt": [4]},
             "points": [{"organization.channels": 16, "tokens": 2}]}
    numpy = {"prompt": np.int32(4), "set": {"link.latency_ps": np.int64(2000)},
             "axes": {"asic.clock_MHz": [np.int64(500), np.int16(1000)],
                      "pim.clock_MHz": {"low": np.int64(250), "high": np.uint32(2000), "num": np.int8(2)},
                      "prompt": [np.int64(4)]},
             "points": [{"organization.channels": np.int64(16), "tokens": np.int64(2)}]}
    a, b = sweeps.plan(plain), sweeps.plan(numpy)
    assert a.digest == b.digest and a.manifest() == b.manifest()
    assert all(type(v) is int for p in b.points for _, v in p.values)
    # floats too (numpy 2 writes repr(np.float64(1.5)) as 'np.float64(1.5)'), and a
    # numpy bool stays a bool, never a number
    f = sweeps.plan({"prompt": 4, "set": {"asic.clock_MHz": np.float64(750.5)},
                     "axes": {"pim.clock_MHz": [np.float32(500.5)]}})
    assert f.points[0].overrides == ("asic.clock_MHz=750.5", "pim.clock_MHz=500.5")
    with pytest.raises(PimsimError, match=r"^sweep: prompt: expected a non-negative number of tokens, got True$"):
        sweeps.plan({"prompt": np.bool_(True)})


@pytest.mark.unit
@pytest.mark.parametrize("call,message", [
    (lambda: sweeps.sweep(None), "sweep: expected a sweep file path or a mapping, got None"),
    (lambda: sweeps.sweep(5), "sweep: expected a sweep file path or a mapping, got 5"),
    (lambda: sweeps.sweep([]), "sweep: expected a sweep file path or a mapping, got []"),
    (lambda: sweeps.plan(""), "sweep file: empty path"),
    (lambda: sweeps.load(None), "sweep folder: expected a path (str or os.PathLike), got None"),
    (lambda: sweeps.read_manifest(None), "sweep manifest: expected a path (str or os.PathLike), got None"),
    (lambda: sweeps.read_journal(3), "sweep journal: expected a path (str or os.PathLike), got 3"),
    (lambda: sweeps.run_point({}), "not a sweep point: no 'index' (expected a Point or Point.to_dict())"),
    (lambda: sweeps.run_point(None), "not a sweep point: expected a Point or Point.to_dict(), got None"),
    (lambda: sweeps.point_row({**_POINT, "values": 5}), "not a sweep point: values: expected a list of "
                                                        "[key, value] pairs, got 5 (expected a Point or Point.to_dict())"),
    (lambda: sweeps.pareto_front(None), "pareto_front: expected an iterable of row dicts, got None"),
    (lambda: sweeps.pareto_front(["row"]), "pareto_front: row 0: expected a row dict, got 'row'"),
    (lambda: sweeps.pareto_front([{"index": 3, "tokens_per_s": "fast", "energy_per_token_J.nominal": 1.0}]),
     "pareto_front: row 3: tokens_per_s: expected a number, got 'fast'"),
    (lambda: sweeps.pareto_front([], x=None), "pareto_front: x: expected a column name, got None"),
    (lambda: sweeps.preset_value(None), "preset_value: expected a section.key path, got None"),
    (lambda: sweeps.preset_value("asic.clock_MHz", preset=5), "preset_value: expected a preset name or "
                                                               "YAML file, got 5"),
    (lambda: sweeps.sweep({"prompt": 4}, progress=5), "progress must be a callable (done, total, row) or "
                                                      "None, got 5"),
    (lambda: sweeps.sweep({"prompt": 4}, resume="yes"), "resume must be True or False, got 'yes'"),
    (lambda: sweeps.sweep({"prompt": 4}, out=5), "out: expected a path (str or os.PathLike), got 5"),
], ids=["sweep-None", "sweep-int", "sweep-list", "plan-empty", "load-None", "manifest-None",
        "journal-int", "run_point-empty", "run_point-None", "point_row-values", "pareto-None",
        "pareto-str-row", "pareto-str-value", "pareto-x", "preset_value-None", "preset_value-int",
        "progress", "resume", "out-int"])
def test_wrong_python_types_are_one_line_pimsim_errors(call, message, monkeypatch):
    def no_plan(source):
        raise AssertionError("the sweep was planned before its arguments were checked")

    if "progress" in message or "resume" in message or "out:" in message:
        monkeypatch.setattr(sweeps, "plan", no_plan)
    with pytest.raises(PimsimError) as info:
        call()
    assert str(info.value) == message


#: a well-formed point dict (run_point/point_row check the shape before anything else)
_POINT = {"index": 0, "point_key": "k", "model": "gpt2-small", "preset": "pim-gpt", "strategy": "pim-gpt",
          "prompt": 4, "tokens": 1, "overrides": [], "values": [], "spec_digest": "s", "trace_hash": "t"}


@pytest.mark.unit
def test_pareto_front_takes_a_sweep_result_and_skips_failed_rows():
    rows = [{"index": 0, "status": "ok", "tokens_per_s": 2.0, "energy_per_token_J.nominal": 2.0},
            {"index": 1, "status": "ok", "tokens_per_s": 1.0, "energy_per_token_J.nominal": 1.0},
            {"index": 2, "status": "ok", "tokens_per_s": 1.0, "energy_per_token_J.nominal": 3.0},
            {"index": 3, "status": "error", "error": "x", "tokens_per_s": "n/a"}]
    result = sweeps.SweepResult(name="r", rows=rows, total=4)
    assert [r["index"] for r in sweeps.pareto_front(result)] == [1, 0]
    assert [r["index"] for r in sweeps.pareto_front(iter(rows))] == [1, 0]


@pytest.mark.unit
def test_run_point_of_a_point_that_fails_is_a_row():
    row = sweeps.run_point({**_POINT, "model": "gpt9"})
    assert row["status"] == "error" and "gpt9" in row["error"] and row["index"] == 0


@pytest.mark.unit
def test_empty_out_is_an_error_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from pimsim.errors import OutputError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match=r"^out: empty path$"):
        sweeps.sweep({"prompt": 1, "tokens": 1}, out="")
    path = Path("s.yaml")
    path.write_text("prompt: 1\ntokens: 1\n")
    assert main(["sweep", str(path), "--out", ""]) == 2
    assert _cli_error(capsys) == "pimsim: error: --out: empty path (name the folder to write)"
    assert sorted(os.listdir(tmp_path)) == ["s.yaml"]


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.mark.e2e
@pytest.mark.parametrize("address,message", [
    ("bogus", "scheduler address 'bogus': no port number; expected tcp://HOST:PORT"),
    ("tcp://host:port", "scheduler address 'tcp://host:port': port 'port' is not a number"),
    ("inproc://x", "scheduler address 'inproc://x': unknown scheme 'inproc'"),
    ("CLOSED", "cannot reach the Dask scheduler at tcp://127.0.0.1:{port}: Connection refused"),
], ids=["no-port", "bad-port", "scheme", "refused"])
def test_cli_bad_scheduler_fails_fast_and_writes_nothing(grid_file, tmp_path, capsys, address, message):
    pytest.importorskip("distributed")
    port = _closed_port()
    address = address.replace("CLOSED", f"tcp://127.0.0.1:{port}")
    new = tmp_path / "new" / "out"          # made by nobody: must not be made
    kept = tmp_path / "kept"                # the user's folder: must stay as it was
    kept.mkdir()
    for out in (new, kept):
        start = time.monotonic()
        assert main(["sweep", str(grid_file), "--scheduler", address, "--out", str(out)]) == 2
        assert time.monotonic() - start < 5
        err = _cli_error(capsys)
        assert err.startswith("pimsim: error: " + message.format(port=port)), err
    assert not (tmp_path / "new").exists() and list(kept.iterdir()) == []


@pytest.mark.e2e
@pytest.mark.parametrize("banner,message", [
    (None, "no Dask handshake within 1 s (is a Dask scheduler listening on that port?)"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", "the service on that port is not a Dask scheduler"),
    (b"", "the connection was closed before a Dask handshake"),
], ids=["silent", "other-service", "closes"])
def test_cli_scheduler_port_that_is_not_dask_fails_within_the_timeout(
        grid_file, tmp_path, capsys, monkeypatch, banner, message):
    """A port that accepts connections but is not a Dask scheduler: a Dask Client would
    wait for its handshake without a timeout; the sweep fails within the connect timeout."""
    pytest.importorskip("distributed")
    import socket
    import threading

    monkeypatch.setattr(sweeps, "_CONNECT_TIMEOUT_S", 1)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    held = []

    def serve():
        conn, _ = server.accept()
        held.append(conn)
        if banner is not None:
            conn.sendall(banner)
            if not banner:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    out = tmp_path / "out"
    start = time.monotonic()
    try:
        assert main(["sweep", str(grid_file), "--scheduler", f"tcp://127.0.0.1:{port}",
                     "--out", str(out)]) == 2
    finally:
        server.close()
        for conn in held:
            conn.close()
    assert time.monotonic() - start < 5
    err = _cli_error(capsys)
    assert err.startswith(f"pimsim: error: cannot reach the Dask scheduler at "
                          f"tcp://127.0.0.1:{port}: {message}"), err
    assert not out.exists()


# ----------------------------------------------------------------------------- execution

@pytest.mark.e2e
def test_two_local_workers_and_dask_give_identical_tables(grid_file, reference, tmp_path, capsys):
    import distributed  # installed by the test extra
    pool = tmp_path / "pool"
    assert main(["sweep", str(grid_file), "--workers", "2", "--out", str(pool)]) == 0
    out = capsys.readouterr().out
    assert "12 of 12 points (12 run, 0 already finished), 12 ok, 0 failed" in out
    assert f"wrote results.csv, results.jsonl, results.png in {pool}" in out
    assert _files(pool) == reference
    assert (pool / "results.png").read_bytes().startswith(b"\x89PNG")

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None)
    try:
        dask = tmp_path / "dask"
        assert main(["sweep", str(grid_file), "--scheduler", cluster.scheduler_address,
                     "--out", str(dask)]) == 0
    finally:
        cluster.close()
    assert _files(dask) == reference
    assert (dask / "results.png").read_bytes() == (pool / "results.png").read_bytes()

    rows = [json.loads(line) for line in reference[sweeps.TABLE_JSONL].decode().splitlines()]
    assert [r["index"] for r in rows] == list(range(12))
    assert all(r["spec_digest"] and r["trace_hash"].startswith("sha256:") for r in rows)
    header = reference[sweeps.TABLE_CSV].decode().splitlines()[0].split(",")
    assert header[:len(sweeps.LEAD_COLUMNS)] == list(sweeps.LEAD_COLUMNS)
    assert {"tokens_per_s", "energy_per_token_J.nominal", "row_hit_rate"} <= set(header)


@pytest.mark.e2e
def test_results_figure_has_the_front_and_a_panel_per_axis(reference):
    """tokens/s vs energy with the Pareto front ringed, then latency per token against
    each axis: numbers on a numeric axis, labels in plan order on a text one."""
    from pimsim.cli.sweep import results_figure

    rows = [json.loads(line) for line in reference[sweeps.TABLE_JSONL].decode().splitlines()]
    result = sweeps.SweepResult("grid12", rows, axes=("asic.clock_MHz", "refresh.policy",
                                                      "pim.mac_lanes"), total=12)
    fig = results_figure(result)
    pareto, *panels = fig.axes
    assert [ax.get_title() for ax in panels] == ["asic.clock_MHz", "refresh.policy", "pim.mac_lanes"]
    points, ringed = (c.get_offsets() for c in pareto.collections)
    front = sweeps.pareto_front(rows)
    assert len(points) == 12 and 1 <= len(front) < 12
    assert [tuple(p) for p in ringed] == [(r["tokens_per_s"], r["energy_per_token_J.nominal"] * 1e3)
                                          for r in front]
    clock, policy, lanes = ([tuple(p) for p in ax.collections[0].get_offsets()] for ax in panels)
    assert clock == [(r["asic.clock_MHz"], r["latency_per_token_s"] * 1e6) for r in rows]
    assert [t.get_text() for t in panels[1].get_xticklabels()] == ["off", "ab"]
    assert policy == [(0.0 if r["refresh.policy"] == "off" else 1.0, r["latency_per_token_s"] * 1e6)
                      for r in rows]
    assert sorted({x for x, _ in lanes}) == [8.0, 16.0]


@pytest.mark.e2e
def test_a_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path):
    # a 2000-token context does not fit GPT-2's 1024 positions: that point fails at run time
    doc = {"prompt": 4, "axes": {"prompt": [4, 2000]}}
    result = sweeps.sweep(doc, workers=2, out=tmp_path)
    assert [r["status"] for r in result.rows] == ["ok", "error"]
    assert "1024" in result.rows[1]["error"] and "\n" not in result.rows[1]["error"]
    assert "tokens_per_s" not in result.rows[1] and result.rows[1]["spec_digest"]
    assert len(result.ok) == 1 and result.complete
    csv = (tmp_path / sweeps.TABLE_CSV).read_text().splitlines()
    assert len(csv) == 3 and ",error," in csv[2]


@pytest.mark.e2e
def test_an_existing_sweep_folder_needs_resume(grid_file, reference, tmp_path):
    sweeps.sweep({"prompt": 4}, out=tmp_path)
    with pytest.raises(PimsimError, match="already holds a sweep"):
        sweeps.sweep({"prompt": 4}, out=tmp_path)
    with pytest.raises(PimsimError, match="holds a different sweep"):
        sweeps.sweep({"prompt": 5}, out=tmp_path, resume=True)
    again = sweeps.sweep({"prompt": 4}, out=tmp_path, resume=True)
    assert again.skipped == 1 and again.complete


#: two cheap points, finished once per module and copied by each resume test
PAIR = """\
prompt: 4
axes:
  asic.clock_MHz: [500, 1000]
"""


@pytest.fixture(scope="module")
def finished_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A sweep file and the folder of its finished sweep."""
    root = tmp_path_factory.mktemp("pair")
    path = root / "pair.yaml"
    path.write_text(PAIR)
    assert sweeps.sweep(path, out=root / "done").complete
    return path, root / "done"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _damage_appended_non_row(out: Path) -> None:
    with open(out / sweeps.JOURNAL, "ab") as fh:
        fh.write(b'{"index": 99}\n')


def _damage_manifest_a_list(out: Path) -> None:
    (out / sweeps.MANIFEST).write_text("[1,2]\n")


def _damage_first_line_garbage(out: Path) -> None:
    journal = out / sweeps.JOURNAL
    journal.write_bytes(b"garbage\n" + journal.read_bytes())


def _damage_a_foreign_row(out: Path) -> None:
    with open(out / sweeps.JOURNAL, "ab") as fh:
        fh.write(b'{"index": 0, "point_key": "0000", "status": "ok"}\n{"index": 1')


@pytest.mark.e2e
@pytest.mark.parametrize("damage,message", [
    (_damage_appended_non_row, "journal.jsonl:3: not a sweep row: no 'point_key'"),
    (_damage_manifest_a_list, "sweep.json: not a sweep manifest: expected a JSON object, got list"),
    (_damage_first_line_garbage, "journal.jsonl:1: not a JSON line: 'garbage'"),
    (_damage_a_foreign_row, "journal.jsonl:3: point_key '0000' is not point 0's"),
], ids=["non-row", "manifest-list", "garbage-first", "foreign-row"])
def test_resume_of_a_damaged_folder_is_an_error_that_changes_nothing(finished_pair, tmp_path, capsys,
                                                                   damage, message):
    """Only a torn last line may be dropped: any other bad line (or a manifest that is
    not one) is a one-line error naming the file and line, and no file is rewritten."""
    import shutil

    path, done = finished_pair
    out = tmp_path / "out"
    shutil.copytree(done, out)
    damage(out)
    before = _snapshot(out)
    assert main(["sweep", str(path), "--workers", "1", "--out", str(out), "--resume"]) == 2
    err = _cli_error(capsys)
    assert err.startswith(f"pimsim: error: {out}{os.sep}{message}"), err
    assert _snapshot(out) == before
    with pytest.raises(PimsimError) as info:
        sweeps.load(out)
    assert str(info.value).startswith(f"{out}{os.sep}{message}")


@pytest.mark.e2e
def test_resume_drops_only_a_torn_last_line(finished_pair, tmp_path, capsys):
    import shutil

    path, done = finished_pair
    out = tmp_path / "out"
    shutil.copytree(done, out)
    journal = out / sweeps.JOURNAL
    with open(journal, "ab") as fh:
        fh.write(b'{"index": 1, "status": "ok", "tokens_per')
    assert len(sweeps.load(out).rows) == 2
    assert main(["sweep", str(path), "--workers", "1", "--out", str(out), "--resume"]) == 0
    assert "2 of 2 points (0 run, 2 already finished)" in capsys.readouterr().out
    assert journal.read_bytes() == (done / sweeps.JOURNAL).read_bytes()
    assert _files(out) == _files(done)


@pytest.mark.e2e
def test_a_new_sweep_that_fails_before_its_first_point_leaves_nothing(tmp_path, monkeypatch):
    def broken(points):
        raise PimsimError("lost the cluster")
        yield  # a generator, like the real runners

    monkeypatch.setattr(sweeps, "_run_inline", broken)
    new = tmp_path / "a" / "b"
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    for out in (new, kept):
        with pytest.raises(PimsimError, match="lost the cluster"):
            sweeps.sweep({"prompt": 4}, out=out)
    assert not (tmp_path / "a").exists()
    assert _snapshot(kept) == {"notes.txt": b"mine"}


@pytest.mark.e2e
def test_kill_mid_sweep_then_resume_loses_and_duplicates_nothing(grid_file, reference, tmp_path):
    out = tmp_path / "killed"
    journal = out / sweeps.JOURNAL
    cmd = [sys.executable, "-c", _ENTRY, "sweep", str(grid_file), "--workers", "2", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        finished = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists():
                finished = journal.read_bytes().count(b"\n")
                if finished >= 3:
                    break
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its pool workers
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before it could be killed"
    assert 3 <= finished < 12
    assert not (out / sweeps.TABLE_CSV).exists()
    before = sweeps.read_journal(journal)
    assert 3 <= len(before) < 12
    # a kill in the middle of a write leaves a torn last line: resume must discard it
    with open(journal, "ab") as fh:
        fh.write(b'{"index": 11, "status": "ok", "tokens_per')

    assert main(["sweep", str(grid_file), "--workers", "2", "--out", str(out), "--resume"]) == 0
    assert _files(out) == reference
    lines = journal.read_bytes().decode().splitlines()
    indices = [json.loads(line)["index"] for line in lines]
    assert sorted(indices) == list(range(12))  # each point exactly once
    assert sweeps.load(out).complete


@pytest.mark.e2e
def test_a_script_without_main_guard_can_use_the_pool(tmp_path):
    # worker processes must not re-run the calling script (notebooks exported as scripts)
    script = tmp_path / "study.py"
    script.write_text("from pimsim.sweep import sweep\n"
                      "r = sweep({'prompt': 4, 'axes': {'asic.clock_MHz': [500, 1000]}}, workers=2)\n"
                      "print(len(r.ok))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "2", proc.stderr[-2000:]
