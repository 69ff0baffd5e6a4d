"""`katapool model ...` given the wrong thing: one clear line, a non-zero exit, before any
engine starts and with no file left behind. In-process (``main``) and engine-free, so fast:
an engine is never reached (``isolated_env`` has none, and the old code failed on that)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from test_model_inspect import _tiny_text_model

from conftest import G170
from katapool.cli.main import main
from katapool.models import load_model
from katapool.models.export_onnx import export_onnx

NINE_BY_NINE = "(;GM[1]FF[4]SZ[9]KM[7];B[ee];W[cc];B[gg];W[cg];B[gc])"


@pytest.fixture(scope="module")
def tiny_net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import numpy as np

    path = tmp_path_factory.mktemp("tiny") / "tiny.txt"
    path.write_text(_tiny_text_model(np.random.default_rng(4)))
    return path


@pytest.fixture(scope="module")
def tiny9_onnx(tiny_net: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny network's 9x9 export, made once for the tests that only read it."""
    path = tmp_path_factory.mktemp("tiny9") / "tiny9.onnx"
    onnx.save(export_onnx(load_model(tiny_net), board=9), str(path))
    return path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["model", *args])
    captured = capsys.readouterr()
    return code, captured.out, " ".join(captured.err.split())


def test_validate_refuses_another_networks_export(isolated_env: Path, tiny_net: Path, tiny9_onnx: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    onnx_file = tiny9_onnx
    game = isolated_env / "nine.sgf"
    game.write_text(NINE_BY_NINE)
    code, out, err = _run(capsys, "validate", str(G170), str(onnx_file), "--sgf", str(game),
                          "--positions", "2")
    assert code == 2 and out == ""
    assert f"{onnx_file} is an export of tiny-net, not of g170-b6c96" in err, err


def test_validate_refuses_games_of_another_board_size(isolated_env: Path, tiny_net: Path, tiny9_onnx: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    onnx_file = tiny9_onnx
    game = isolated_env / "nineteen.sgf"
    game.write_text(NINE_BY_NINE.replace("SZ[9]", "SZ[19]"))
    code, out, err = _run(capsys, "validate", str(tiny_net), str(onnx_file), "--sgf", str(game),
                          "--positions", "2")
    assert code == 2 and out == ""
    assert "the games hold no 9x9 positions (board sizes: 19)" in err, err
    assert "Traceback" not in err


def test_outputs_need_their_own_suffix_and_never_overwrite_the_input(
        isolated_env: Path, tiny_net: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fp32 = isolated_env / "tiny.onnx"
    onnx.save(export_onnx(load_model(tiny_net), board=9), str(fp32))
    before = fp32.read_bytes()
    network_like = isolated_env / "tiny-export.bin.gz"
    cases = [
        (["export-onnx", str(tiny_net), "-o", str(network_like)], "named *.onnx", network_like),
        (["export-tflite", str(tiny_net), "-o", str(isolated_env / "t.onnx"), "--no-check",
          "--board", "9"], "named *.tflite", isolated_env / "t.onnx"),
        (["quantize", str(fp32), "--fp16", "--positions", "0", "-o", str(fp32)],
         "is the input file", None),
        (["quantize", str(fp32), "--fp16", "--positions", "0", "-o",
          str(isolated_env / "q.txt")], "named *.onnx", isolated_env / "q.txt"),
    ]
    (isolated_env / "folder.onnx").mkdir()
    cases.append((["quantize", str(fp32), "--fp16", "--positions", "0", "-o",
                   str(isolated_env / "folder.onnx")], "folder.onnx is a directory", None))
    for args, message, not_written in cases:
        code, out, err = _run(capsys, *args)
        assert code == 2 and message in err and out == "", (args, err)
        assert not_written is None or not not_written.exists(), args
    assert fp32.read_bytes() == before


def test_written_files_get_ordinary_modes(tmp_path: Path) -> None:
    """Files written through a temporary file (mkstemp: owner-only) and packages coremltools
    saved from its temporary folder get the modes of a plainly created file and folder."""
    import os
    import stat

    from katapool.models.export_check import ordinary_modes, write_atomically

    old = os.umask(0o027)
    try:
        write_atomically(tmp_path / "net.tflite", b"data")
        package = tmp_path / "net.mlpackage"
        (package / "Data").mkdir(parents=True, mode=0o700)
        (package / "Data" / "model.mlmodel").write_bytes(b"x")
        (package / "Data" / "model.mlmodel").chmod(0o600)
        ordinary_modes(package)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "net.tflite").stat().st_mode) == 0o640
    assert stat.S_IMODE((package / "Data").stat().st_mode) == 0o750
    assert stat.S_IMODE((package / "Data" / "model.mlmodel").stat().st_mode) == 0o640


@pytest.mark.parametrize("option", [["--postprocess"], ["--board", "9"]])
def test_via_engine_refuses_options_the_engine_does_not_take(
        isolated_env: Path, option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    out_file = isolated_env / "net.onnx"
    code, out, err = _run(capsys, "export-onnx", str(G170), "-o", str(out_file), "--via-engine",
                          *option)
    assert code == 2 and "--board and --postprocess are katapool's exporter's options" in err, err
    assert out == "" and not out_file.exists()


def test_input_model_is_checked_before_the_engine(isolated_env: Path, tiny_net: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    onnx_file = isolated_env / "g170.onnx"
    onnx.save(export_onnx(load_model(G170), board=9), str(onnx_file))
    game = isolated_env / "nine.sgf"
    game.write_text(NINE_BY_NINE)
    old_net = isolated_env / "old.txt"  # version 5: other input features than g170's v8
    old_net.write_text(tiny_net.read_text().replace("tiny-net\n8", "tiny-net\n5", 1))
    common = ["--sgf", str(game), "--positions", "2", "--input-model"]
    for args, message in [
        (["validate", str(G170), str(onnx_file), *common, str(isolated_env / "none.bin.gz")],
         "cannot read"),
        (["validate", str(G170), str(onnx_file), *common, str(old_net)],
         "its input features (model version 5"),
        (["quantize", str(onnx_file), "--fp16", "--network", str(G170), "-o",
          str(isolated_env / "q.onnx"), *common, str(old_net)], "its input features"),
    ]:
        code, out, err = _run(capsys, *args)
        assert code != 0 and message in err and out == "", (args, err)
        assert "--input-model" in err or "none.bin.gz" in err
    assert not (isolated_env / "q.onnx").exists()


def test_build_trt_output_checked_before_tensorrt(isolated_env: Path, tiny_net: Path, tiny9_onnx: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """-o net.onnx would have replaced the model with the engine, found after minutes of build
    (or, without TensorRT, never said at all)."""
    onnx_file = tiny9_onnx
    before = onnx_file.read_bytes()
    (isolated_env / "file").write_text("")
    for target, message in [(onnx_file, "named *.plan or *.engine or *.trt"),
                            (isolated_env / "file" / "net.plan", "file is a file")]:
        code, out, err = _run(capsys, "build-trt", str(onnx_file), "-o", str(target))
        assert code == 2 and message in err and out == "", err
    assert onnx_file.read_bytes() == before


@pytest.mark.parametrize("option, message", [
    (["--bench-batch", "100000"], "--bench-batch must be 1 to 1024 (got 100000)"),
    (["--bench-batch", "0"], "--bench-batch must be 1 to 1024 (got 0)"),
    (["--bench-seconds", "nan"], "--bench-seconds must be 0 or more (got nan)"),
])
def test_quantize_speed_options_out_of_range(isolated_env: Path, tiny_net: Path, option: list[str],
                                             message: str, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = isolated_env / "q.onnx"
    code, out, err = _run(capsys, "quantize", str(tiny_net), "--fp16", "--positions", "0",
                          "--board", "9", "-o", str(out_file), *option)
    assert code == 2 and message in err and out == "", err
    assert not out_file.exists()


def test_a_game_katago_cannot_take_is_named_as_given(isolated_env: Path, tiny_net: Path, tiny9_onnx: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    onnx_file = tiny9_onnx
    game = isolated_env / "big.sgf"
    game.write_text("(;GM[1]FF[4]SZ[25]KM[7];B[dd])")
    code, out, err = _run(capsys, "validate", str(tiny_net), str(onnx_file), "--sgf", str(game),
                          "--positions", "2")
    assert code == 1 and out == ""
    assert f"error: {game}: board size 25 is larger than KataGo's 19" in err, err  # not a temp copy


def test_a_move_on_an_occupied_point_is_found_before_the_engine(
        isolated_env: Path, tiny_net: Path, tiny9_onnx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """evalsgf used to abort on it half-way, naming a temporary copy of the game."""
    onnx_file = tiny9_onnx
    game = isolated_env / "illegal.sgf"
    game.write_text("(;GM[1]FF[4]SZ[9]KM[7];B[dd];W[ee];B[ee];W[cc])")
    code, out, err = _run(capsys, "validate", str(tiny_net), str(onnx_file), "--sgf", str(game),
                          "--positions", "2")
    assert code == 1 and out == ""
    assert f"{game}: move 3 (B E5) is on an occupied point" in err, err


def test_a_move_the_engine_refuses_is_named_in_the_users_file(
        isolated_env: Path, tiny_net: Path, tiny9_onnx: Path, katago: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """What the engine says of a game it cannot replay once named katapool's temporary copy
    of it (/tmp/katapool-validate-…/000-suicide.sgf). Move 4 is a suicide: a move on an empty
    point, so only the engine refuses it."""
    onnx_file = tiny9_onnx
    game = isolated_env / "suicide.sgf"
    game.write_text("(;GM[1]FF[4]SZ[9]KM[7];B[ba];W[ia];B[ab];W[aa];B[gg];W[hh])")
    code, out, err = _run(capsys, "validate", str(tiny_net), str(onnx_file), "--sgf", str(game),
                          "--positions", "4", "--katago", str(katago))
    assert code == 1 and out == "", err
    assert f"katago evalsgf failed on {game} move " in err, err
    assert f"Illegal move in {game} turn 3" in err, err
    assert "000-suicide.sgf" not in err and "katapool-validate-" not in err, err


@pytest.mark.parametrize("command, suffix", [("export-tflite", ".tflite"),
                                             ("export-coreml", ".mlpackage")])
def test_no_check_with_check_games_is_refused(isolated_env: Path, tiny_net: Path, command: str,
                                              suffix: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The games were silently unused: the user believed the file was checked on them."""
    game = isolated_env / "nine.sgf"
    game.write_text(NINE_BY_NINE)
    out_file = isolated_env / f"net{suffix}"
    code, out, err = _run(capsys, command, str(tiny_net), "-o", str(out_file), "--board", "9",
                          "--no-check", "--sgf", str(game))
    assert code == 2 and "with --no-check there is no check" in err and out == "", err
    assert not out_file.exists()


def test_export_coreml_leaves_a_file_of_the_packages_name_alone(
        isolated_env: Path, tiny_net: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It was renamed to a hidden .old file to make room and never removed."""
    notes = isolated_env / "net.mlpackage"
    notes.write_text("my notes")
    code, out, err = _run(capsys, "export-coreml", str(tiny_net), "-o", str(notes), "--board", "9",
                          "--no-check")
    assert code == 2 and "is a file, not a Core ML package" in err and out == "", err
    assert notes.read_text() == "my notes"
    assert sorted(p.name for p in isolated_env.iterdir() if "mlpackage" in p.name) == [notes.name]


def test_a_reduced_precision_file_failing_the_fp32_limits_is_told_why(tiny_net: Path) -> None:
    """`validate net.bin.gz net-fp16.onnx` said only 'failed': the default limits are FP32's."""
    from katapool.cli.model_cmd import limits_note
    from katapool.models.quantize import to_fp16

    fp32 = export_onnx(load_model(tiny_net), board=9)
    assert limits_note(fp32, "fp32") is None
    fp16 = to_fp16(fp32)
    assert "computes in FP16" in (limits_note(fp16, "fp32") or "")
    assert "--limits fp16" in (limits_note(fp16, "fp32") or "")
    assert limits_note(fp16, "fp16") is None
